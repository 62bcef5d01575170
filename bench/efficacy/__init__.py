"""The search-efficacy suite: landscapes the project builds itself, their reference scores, and
the regret of a search strategy against them (``bench/search_efficacy.py`` runs it)."""
