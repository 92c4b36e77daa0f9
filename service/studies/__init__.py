"""Small-batch studies, the whole concept: arms and their specs (``arms``), per-arm figures
(``summary``), the verdict (``verdict``), and creating, summarizing, cancelling and deleting
them (``runs``)."""
