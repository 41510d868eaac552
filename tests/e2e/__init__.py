"""End-to-end tests on a real control plane, and the harness that provides it.

`controlplane.ControlPlane` runs etcd + kube-apiserver + kube-controller-manager from
`KUBEBUILDER_ASSETS`; `podrunner.PodRunner` plays scheduler and kubelet, running each pod's containers
as local processes; `crds.install_crds` installs CRDs; `conftest.py` wires them into fixtures. See
README.md in this folder.
"""
