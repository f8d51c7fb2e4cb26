"""Evaluation metrics as pure functions of (reference, prediction) pairs, or of per-item statistics for the
corpus-level ones. Heavy libraries (nltk, rouge, bert-score, torch) are imported on first use."""

from ecgbench.infer.metrics.bertscore import SimilarityModel, resolve_similarity_model, similarity_scores
from ecgbench.infer.metrics.bleu import bleu_from_totals, bleu_stats, corpus_bleu
from ecgbench.infer.metrics.classification import (
    f1_stats,
    indicator,
    macro_auroc,
    macro_f1_from_totals,
    weighted_auroc,
)
from ecgbench.infer.metrics.ecgqa import QAScore, question_kind, score_closed
from ecgbench.infer.metrics.meteor import meteor, use_wordnet
from ecgbench.infer.metrics.rouge import RougeScores, rouge
from ecgbench.infer.metrics.text import (
    exact_match,
    is_empty,
    normalize_answer,
    normalized_match,
    squad_normalize,
    token_f1,
)

__all__ = [
    "QAScore",
    "RougeScores",
    "SimilarityModel",
    "bleu_from_totals",
    "bleu_stats",
    "corpus_bleu",
    "exact_match",
    "f1_stats",
    "indicator",
    "is_empty",
    "macro_auroc",
    "macro_f1_from_totals",
    "meteor",
    "normalize_answer",
    "normalized_match",
    "question_kind",
    "resolve_similarity_model",
    "rouge",
    "score_closed",
    "similarity_scores",
    "squad_normalize",
    "token_f1",
    "use_wordnet",
    "weighted_auroc",
]
