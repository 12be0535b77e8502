"""Label audit: rank training masks by how much a trained model (out-of-fold where possible) disagrees with
them, and write voxel maps of the suspected errors, the model's confidence and corrected masks.

The API lives in :mod:`svldrl.audit.audit` (``audit``, ``suspect_errors``, ``cl_suspect_errors``,
``correct_mask``, ``case_measures``), the reports in :mod:`svldrl.audit.report` and the ``svldrl audit``
subcommand in :mod:`svldrl.audit.cli`. Nothing is imported here, so that ``svldrl --help`` stays fast.
"""
