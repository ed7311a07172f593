"""GKE: pod resources that fit a node (`resources`) and the work pool's base job template
(`job_template`); the cluster scripts and Helm values are in ``deployments/gke``."""
