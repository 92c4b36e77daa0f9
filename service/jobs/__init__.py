"""Jobs: the one writer of a job's state (``lifecycle``), what a submission is checked against
(``submission``), the FIFO admission rules (``admission``, pure), the loop that follows Ray and
admits queued jobs (``scheduler``), deletion and the retention of finished jobs' files
(``retention``)."""
