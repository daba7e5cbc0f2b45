"""Executors build the parts a plan says are missing or stale.

``local``: one process; decoding runs ahead in threads, encoder batches span episodes, writes are
asynchronous. ``dask``: one task per part on a dask cluster (LocalCluster or an existing scheduler);
each task runs the local executor for its part inside a worker process. ``slurm``
(``slurm_cluster``): the same dask tasks on workers dask-jobqueue submits as SLURM jobs.
``slurm_submit``: ``navcache submit``, shard jobs as a SLURM array plus a finalising job.
"""
