# Shared settings of scripts/k8s/{up,down,e2e} (sourced, not run).
# The local control plane lives on a bridge of its own in the root network
# namespace; pods get namespaces on it (tests/k8s/pod_runner.py).
K8S_RUN="${NOD_K8S_RUN:-/tmp/nod-k8s}"      # pids, certificates, logs, volumes
K8S_BRIDGE=nodk8s0
K8S_GATEWAY=10.214.0.1                      # the bridge: apiserver, kube-proxy's masquerade
K8S_POD_CIDR=10.214.0.0/16
K8S_SERVICE_CIDR=10.215.0.0/24
K8S_API_SERVICE_IP=10.215.0.1               # the `kubernetes` Service
K8S_API_PORT=6443
K8S_ETCD_CLIENT=127.0.0.1:23790
K8S_ETCD_PEER=127.0.0.1:23800
KUBECONFIG_ADMIN="$K8S_RUN/admin.kubeconfig"
# The control plane's store: Debian's etcd (default) or Nod, whose members
# (1 or 3) listen on 127.0.0.1:23790+i (client), 23800+i (peer) and
# 23810+i (metrics, /readyz). The nod binary comes from $NOD_BIN_DIR.
K8S_STORE="${NOD_K8S_STORE:-etcd}"
K8S_STORE_MEMBERS="${NOD_K8S_STORE_MEMBERS:-1}"
# Extra kube-apiserver flags, split on spaces (e.g. --etcd-compaction-interval=10s).
K8S_APISERVER_ARGS="${NOD_K8S_APISERVER_ARGS:-}"
