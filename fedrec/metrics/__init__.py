"""Evaluation metrics and the evaluation protocol of fedrec.

* :mod:`~fedrec.metrics.ranking` -- full-ranking target ranks (pessimistic ties by
  default) and HR / recall / precision / NDCG / MAP / MRR / AUC per user;
* :mod:`~fedrec.metrics.sampled` -- ``sampled_*`` metrics against sampled negatives;
* :mod:`~fedrec.metrics.beyond` -- top-K lists, coverage, diversity, novelty, ARP;
* :mod:`~fedrec.metrics.groups` -- user groupings and per-group means / gaps;
* :mod:`~fedrec.metrics.aggregate` -- exact aggregation of per-user sums across clients;
* :mod:`~fedrec.metrics.evaluate` -- :func:`evaluate`, the single protocol entry point.
"""

from fedrec.metrics.aggregate import aggregate_metric_sums, coverage_from_counts, metric_sums
from fedrec.metrics.beyond import (
    average_popularity,
    coverage,
    intra_list_diversity,
    novelty,
    per_user_diversity,
    per_user_novelty,
    per_user_popularity,
    top_k,
)
from fedrec.metrics.evaluate import EvalResult, evaluate, stage_matrices, users_to_evaluate
from fedrec.metrics.groups import activity_groups, age_groups, gender_groups, group_means
from fedrec.metrics.ranking import TargetRanks, metrics_from_ranks, ranking_metric_names, target_ranks
from fedrec.metrics.sampled import sample_negatives, sampled_metrics, sampled_target_ranks

__all__ = [
    "TargetRanks",
    "target_ranks",
    "metrics_from_ranks",
    "ranking_metric_names",
    "sample_negatives",
    "sampled_target_ranks",
    "sampled_metrics",
    "top_k",
    "coverage",
    "per_user_diversity",
    "intra_list_diversity",
    "per_user_novelty",
    "novelty",
    "per_user_popularity",
    "average_popularity",
    "activity_groups",
    "gender_groups",
    "age_groups",
    "group_means",
    "metric_sums",
    "aggregate_metric_sums",
    "coverage_from_counts",
    "EvalResult",
    "evaluate",
    "stage_matrices",
    "users_to_evaluate",
]
