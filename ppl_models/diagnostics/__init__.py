"""Diagnostics of a fit: ArviZ conversion, relabelling, summaries, LOO and plots.

Everything here reads a :class:`~ppl_models.infer.result.FitResult` (and the model it holds);
nothing calls back into a driver.
"""

from ppl_models.diagnostics.active_units import active_units
from ppl_models.diagnostics.amortized import (
    amortization_summary,
    amortized_diagnostics,
    amortized_loo,
    compare_amortized,
)
from ppl_models.diagnostics.amortized_plots import plot_khat
from ppl_models.diagnostics.criteria import information_criteria
from ppl_models.diagnostics.inference_data import to_inference_data
from ppl_models.diagnostics.memberships import membership_table, memberships
from ppl_models.diagnostics.plots import (
    plot_mixture,
    plot_objective,
    plot_posterior,
    plot_trace,
    save_plots,
)
from ppl_models.diagnostics.relabel import relabel_draws, relabel_result
from ppl_models.diagnostics.summary import loo, summarize

__all__ = [
    "active_units",
    "amortization_summary",
    "amortized_diagnostics",
    "amortized_loo",
    "compare_amortized",
    "information_criteria",
    "loo",
    "membership_table",
    "memberships",
    "plot_khat",
    "plot_mixture",
    "plot_objective",
    "plot_posterior",
    "plot_trace",
    "relabel_draws",
    "relabel_result",
    "save_plots",
    "summarize",
    "to_inference_data",
]

from ppl_models.diagnostics.clustering import (
    assign_clusters,
    cluster_accuracy,
    cluster_confusion,
    match_clusters,
)
from ppl_models.diagnostics.vae_plots import (
    plot_cluster_samples,
    plot_interpolations,
    plot_latent_map,
    plot_prior_samples,
    plot_reconstructions,
    save_vae_plots,
)

__all__ += [
    "assign_clusters",
    "cluster_accuracy",
    "cluster_confusion",
    "match_clusters",
    "plot_cluster_samples",
    "plot_interpolations",
    "plot_latent_map",
    "plot_prior_samples",
    "plot_reconstructions",
    "save_vae_plots",
]
