
@9a9a222222222222222222222222222222222222222222222222222222222222!
io.cri-containerd.kindsandbox=
io.kubernetes.pod.uid$1c2d3e4f-0000-4000-8000-000000000001registry.k8s.io/pause:3.9"
io.containerd.runc.v2*ë
6types.containerd.io/opencontainers/runtime-spec/1/Spec°{"ociVersion": "1.1.0", "process": {"env": ["PATH=/bin", "TEAM=payments", "SECRET=x"], "args": ["/bin/sh"]}, "hostname": "web-1", "linux": {"cgroupsPath": "/default/2bf0a1c3"}}2	overlayfs:@9a9a222222222222222222222222222222222222222222222222222222222222B€÷ÄÕJ€÷ÄÕ