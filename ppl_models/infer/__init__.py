"""Drivers: free functions that fit any model and return one :class:`FitResult`."""

from ppl_models.infer.adversarial import fit_adversarial
from ppl_models.infer.cluster_init import init_prior_from_codes
from ppl_models.infer.em import fit_em, kmeans_plus_plus
from ppl_models.infer.evaluation import elbo_terms, log_marginal_likelihood
from ppl_models.infer.mcmc import fit_mcmc
from ppl_models.infer.pretrain import fit_clustering_vae
from ppl_models.infer.result import FitResult
from ppl_models.infer.standard_errors import standard_errors
from ppl_models.infer.svi import fit_svi, load_checkpoint
from ppl_models.infer.trainer import TrainerConfig

__all__ = [
    "FitResult",
    "TrainerConfig",
    "elbo_terms",
    "fit_adversarial",
    "fit_clustering_vae",
    "fit_em",
    "fit_mcmc",
    "fit_svi",
    "init_prior_from_codes",
    "kmeans_plus_plus",
    "load_checkpoint",
    "log_marginal_likelihood",
    "standard_errors",
]
