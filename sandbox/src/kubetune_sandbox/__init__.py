"""The local cluster: a Kubernetes API emulator (emulator/) and what a cluster runs around it (cluster/:
controllers, a kubelet that runs pods as local processes, services, S3), plus the `kubetune emulator`,
`kubetune sandbox` and `kubetune quickstart` commands (cli/). For tests and the quickstart; the operator
image does not contain it."""
