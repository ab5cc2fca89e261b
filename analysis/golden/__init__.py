"""The golden set together: its definition (``cases``), the automatic checks (``checks``,
``run_checks``) and the nightly report (``report``, ``html``)."""
