
@7f3e111111111111111111111111111111111111111111111111111111111111#
io.kubernetes.container.nameapp-
io.kubernetes.pod.nameweb-5d8f7c9b4-x2x9z#
io.kubernetes.pod.namespaceshop=
io.kubernetes.pod.uid$1c2d3e4f-0000-4000-8000-000000000001#
io.cri-containerd.kind	containeraregistry.k8s.io/pause:3.9@sha256:abababababababababababababababababababababababababababababababab"
io.containerd.runc.v2*
6types.containerd.io/opencontainers/runtime-spec/1/SpecÔ{"ociVersion": "1.1.0", "process": {"env": ["PATH=/bin", "TEAM=payments", "SECRET=x"], "args": ["/bin/sh"]}, "hostname": "web-1", "linux": {"cgroupsPath": "kubepods-besteffort-pod1c2d.slice:cri-containerd:7f3e"}}2	overlayfs:@7f3e111111111111111111111111111111111111111111111111111111111111B€÷ÄÕJ€÷ÄÕ