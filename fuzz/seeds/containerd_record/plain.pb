
@2bf0a1c300000000000000000000000000000000000000000000000000000000
com.example.teampaymentsdocker.io/library/nginx:1.25"
io.containerd.runc.v2*ë
6types.containerd.io/opencontainers/runtime-spec/1/Spec°{"ociVersion": "1.1.0", "process": {"env": ["PATH=/bin", "TEAM=payments", "SECRET=x"], "args": ["/bin/sh"]}, "hostname": "web-1", "linux": {"cgroupsPath": "/default/2bf0a1c3"}}2	overlayfs:@2bf0a1c300000000000000000000000000000000000000000000000000000000B€÷ÄÕJ€÷ÄÕ