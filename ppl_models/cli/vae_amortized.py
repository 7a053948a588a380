"""``fit vae``'s encoder diagnostics: ``amortized.nc``, ``khat.png`` and their figures.

One call from :mod:`ppl_models.cli.fit_vae`, after training, on the test images: the ArviZ
data of :func:`ppl_models.diagnostics.amortized_diagnostics` (per-image PSIS k-hat of the
encoder, importance-weighted bound, ELBO and gap) written as netCDF, the k-hat plot with the
images the encoder gets worst, and a few figures for ``metrics.json``. It uses the run's
``--particles``; below :data:`~ppl_models.diagnostics.amortized.MIN_PARTICLES` there is no
k-hat to fit, so nothing is written and the figures say why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

__all__ = ["AMORTIZED_FILE", "KHAT_FILE", "write_amortized"]

#: The ArviZ data written into the output folder.
AMORTIZED_FILE = "amortized.nc"
#: The k-hat plot.
KHAT_FILE = "khat.png"


def write_amortized(
    model: Any,
    x: torch.Tensor,
    folder: Path,
    *,
    particles: int,
    seed: int,
    progress: bool | None,
    plots: bool,
) -> tuple[dict[str, Any], float | None]:
    """Write ``amortized.nc`` (and ``khat.png`` when ``plots``) into ``folder``.

    Returns
    -------
    dict
        For ``metrics.json``: ``num_particles``, ``khat_median``, ``khat_max``,
        ``share_khat_bad`` (above 0.7), ``share_khat_good`` (at most 0.5), ``gap_mean`` and
        ``gap_q05`` / ``gap_q50`` / ``gap_q95`` (IWAE minus ELBO per image, nats), ``files``;
        or ``{"skipped": reason}`` when ``particles`` is too small for a k-hat.
    float or None
        The mean importance-weighted bound per image (the run's ``test_log_likelihood``, from
        the same draws: the command does not draw them twice), or None when skipped.
    """
    from ppl_models._shared.figures import save_png
    from ppl_models.diagnostics import amortization_summary, amortized_diagnostics, plot_khat
    from ppl_models.diagnostics.amortized import AMORTIZED_GROUP, MIN_PARTICLES

    if particles < MIN_PARTICLES:
        return {"skipped": f"--particles {particles} < {MIN_PARTICLES}: too few importance "
                           "samples for a PSIS k-hat"}, None
    idata = amortized_diagnostics(model, x, num_particles=particles, seed=seed,
                                  progress=progress)
    idata.to_netcdf(folder / AMORTIZED_FILE)
    files = [AMORTIZED_FILE]
    if plots:
        save_png(plot_khat(idata, x), folder / KHAT_FILE)
        files.append(KHAT_FILE)
    summary = amortization_summary(idata)
    attrs = idata[AMORTIZED_GROUP].attrs
    iwae = float(idata[AMORTIZED_GROUP]["iwae"].mean())
    return {
        "num_particles": particles,
        "khat_median": float(summary.loc["khat", "median"]),
        "khat_max": float(summary.loc["khat", "max"]),
        "share_khat_good": float(summary.loc["khat", "share_good"]),
        "share_khat_bad": float(summary.loc["khat", "share_bad"]),
        **{key: float(attrs[key]) for key in ("gap_mean", "gap_q05", "gap_q50", "gap_q95")},
        "files": files,
    }, iwae
