"""Analysis on representations only (no image needed): indexes, similarity, attribution, diff, patches."""
