//! The configuration files of a [`LocalNode`](super::LocalNode), as text: containerd's
//! `config.toml`, the kubelet's `KubeletConfiguration`, the CNI network list, kube-proxy's
//! `KubeProxyConfiguration` and CoreDNS's `Corefile`. Pure functions of a [`NodeLayout`], so the
//! settings that made a node work here (notes/real-node.md) are pinned by unit tests.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The cluster DNS domain served by the node's CoreDNS.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The pause (sandbox) image built locally and imported into the node's containerd.
pub const PAUSE_IMAGE: &str = "localhost/harmony-fleet-pause:latest";
/// The CNI bridge inside the node's network namespace.
pub const CNI_BRIDGE: &str = "hfcni0";
/// containerd's namespace for Kubernetes (what the CRI plugin and `ctr -n` use).
pub const CONTAINERD_NAMESPACE: &str = "k8s.io";

/// Where everything of one node lives, and its addresses. Built by [`NodeLayout::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayout {
    /// The Node object's name.
    pub name: String,
    /// The node's data directory.
    pub dir: PathBuf,
    /// The node's address (its end of the link to the host, in its network namespace).
    pub node_ip: Ipv4Addr,
    /// The host's end of that link: where Pods reach the kube-apiserver.
    pub host_ip: Ipv4Addr,
    /// The Pods' subnet (a /24 on the CNI bridge, bridge at `.1`).
    pub pod_subnet: Ipv4Addr,
    /// Where the CNI plugins are (Debian's `containernetworking-plugins`).
    pub cni_bin_dir: PathBuf,
    /// runc (Debian's `runc`).
    pub runc: PathBuf,
    /// The kubeconfig the kubelet, kube-proxy and CoreDNS use.
    pub kubeconfig: PathBuf,
}

impl NodeLayout {
    /// A layout under `dir` for the node on the link `host_ip` ↔ `node_ip`; the pod subnet is
    /// `10.214.<n>.0/24` where `<n>` is the link's third octet (unique per host like the link).
    pub fn new(name: &str, dir: &Path, host_ip: Ipv4Addr, node_ip: Ipv4Addr) -> Self {
        let n = node_ip.octets()[2];
        NodeLayout {
            name: name.to_owned(),
            dir: dir.to_owned(),
            node_ip,
            host_ip,
            pod_subnet: Ipv4Addr::new(10, 214, n, 0),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            runc: PathBuf::from("/usr/sbin/runc"),
            kubeconfig: dir.join("kubeconfig"),
        }
    }

    /// `10.214.<n>.0/24`.
    pub fn pod_cidr(&self) -> String {
        format!("{}/24", self.pod_subnet)
    }

    /// The CNI bridge's address, the Pods' gateway.
    pub fn pod_gateway(&self) -> Ipv4Addr {
        let o = self.pod_subnet.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 1)
    }

    /// containerd's gRPC socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    /// containerd's config file.
    pub fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd/config.toml")
    }

    /// Where the CNI network list is written.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    /// The kubelet's `--root-dir`.
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    /// The kubelet's config file.
    pub fn kubelet_config(&self) -> PathBuf {
        self.dir.join("kubelet-config.yaml")
    }

    /// kube-proxy's config file.
    pub fn kube_proxy_config(&self) -> PathBuf {
        self.dir.join("kube-proxy-config.yaml")
    }

    /// CoreDNS's Corefile.
    pub fn corefile(&self) -> PathBuf {
        self.dir.join("Corefile")
    }

    /// The resolv.conf the kubelet hands to Pods for names outside the cluster: empty, so
    /// nothing leaves this machine.
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }

    /// Logs, one per process.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

/// containerd's `config.toml` (version 2, containerd 1.6): own root, state and sockets; CRI with
/// runc through cgroupfs, the local pause image, and `restrict_oom_score_adj` — without it every
/// sandbox fails here (`can't get final child's PID from pipe: EOF`: the kernel refuses the
/// kubelet's `oom_score_adj` of -998).
pub fn containerd_toml(layout: &NodeLayout) -> String {
    let d = layout.dir.join("containerd");
    let q = |p: PathBuf| toml_string(&p.display().to_string());
    format!(
        r#"version = 2
root = {root}
state = {state}

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause}
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = {runc}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
"#,
        root = q(d.join("root")),
        state = q(d.join("state")),
        socket = q(layout.containerd_socket()),
        ttrpc = q(d.join("containerd.sock.ttrpc")),
        opt = q(d.join("opt")),
        pause = toml_string(PAUSE_IMAGE),
        runc = q(layout.runc.clone()),
        cni_bin = q(layout.cni_bin_dir.clone()),
        cni_conf = q(layout.cni_conf_dir()),
    )
}

/// The CNI network list: a bridge with host-local addresses from the pod subnet, masquerading
/// what leaves it, and portmap for `hostPort`.
pub fn cni_conflist(layout: &NodeLayout) -> String {
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "harmony-fleet-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": CNI_BRIDGE,
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": layout.pod_cidr(),
                        "gateway": layout.pod_gateway().to_string(),
                    }]],
                    "dataDir": layout.dir.join("cni/ipam").display().to_string(),
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    // `json!` output is valid JSON by construction.
    format!("{list:#}\n")
}

/// The kubelet's `KubeletConfiguration`: cgroupfs on this cgroup-v1 host with no QoS cgroups or
/// node-allocatable enforcement, no swap check, no eviction, the node's own containerd, and the
/// node's CoreDNS as cluster DNS. The kubelet API answers only in the node's network namespace.
pub fn kubelet_yaml(layout: &NodeLayout) -> String {
    let config = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": false,
        "cgroupsPerQOS": false,
        "enforceNodeAllocatable": [],
        "failSwapOn": false,
        "localStorageCapacityIsolation": false,
        "evictionHard": {},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "containerRuntimeEndpoint": format!("unix://{}", layout.containerd_socket().display()),
        "address": layout.node_ip.to_string(),
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "readOnlyPort": 0,
        "authentication": {
            "anonymous": { "enabled": true },
            "webhook": { "enabled": false },
        },
        "authorization": { "mode": "AlwaysAllow" },
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [layout.node_ip.to_string()],
        "resolvConf": layout.resolv_conf().display().to_string(),
        "registerNode": true,
        "serializeImagePulls": false,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
    });
    // JSON is YAML; the kubelet reads either.
    format!("{config:#}\n")
}

/// kube-proxy's `KubeProxyConfiguration`: iptables mode inside the node's network namespace,
/// masquerading all Service traffic (Pods on one bridge then get replies through the node, with
/// or without bridge netfilter), conntrack sysctls left alone.
pub fn kube_proxy_yaml(layout: &NodeLayout) -> String {
    let config = serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": { "kubeconfig": layout.kubeconfig.display().to_string() },
        "hostnameOverride": layout.name,
        "bindAddress": layout.node_ip.to_string(),
        "healthzBindAddress": format!("{}:10256", layout.node_ip),
        "metricsBindAddress": "127.0.0.1:10249",
        "clusterCIDR": layout.pod_cidr(),
        "mode": "iptables",
        "iptables": { "masqueradeAll": true, "syncPeriod": "5s", "minSyncPeriod": "0s" },
        "conntrack": { "maxPerCore": 0, "min": 0 },
        "nodePortAddresses": [format!("{}/32", layout.node_ip)],
    });
    format!("{config:#}\n")
}

/// CoreDNS's `Corefile`: the cluster domain from the API (the kubernetes plugin), on the node's
/// address, nothing forwarded off this machine.
pub fn corefile(layout: &NodeLayout, context: &str) -> String {
    format!(
        ".:53 {{\n    bind {ip}\n    errors\n    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n        kubeconfig {kubeconfig} {context}\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n    }}\n    cache 5\n}}\n",
        ip = layout.node_ip,
        kubeconfig = layout.kubeconfig.display(),
    )
}

fn toml_string(s: &str) -> String {
    // A TOML basic string uses JSON's escapes.
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> NodeLayout {
        NodeLayout::new(
            "node-a",
            Path::new("/state/node"),
            Ipv4Addr::new(10, 213, 7, 1),
            Ipv4Addr::new(10, 213, 7, 2),
        )
    }

    #[test]
    fn pod_subnet_follows_the_link_subnet() {
        let l = layout();
        assert_eq!(l.pod_cidr(), "10.214.7.0/24");
        assert_eq!(l.pod_gateway(), Ipv4Addr::new(10, 214, 7, 1));
    }

    #[test]
    fn containerd_has_its_own_socket_and_restricts_oom_score_adj() {
        let text = containerd_toml(&layout());
        assert!(text.contains(r#"address = "/state/node/containerd/containerd.sock""#));
        assert!(text.contains(r#"root = "/state/node/containerd/root""#));
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains("SystemdCgroup = false"));
        assert!(text.contains(&format!("sandbox_image = \"{PAUSE_IMAGE}\"")));
    }

    #[test]
    fn kubelet_uses_cgroupfs_the_own_socket_and_the_node_dns() {
        let v: serde_json::Value = serde_json::from_str(&kubelet_yaml(&layout())).expect("json");
        assert_eq!(v["cgroupDriver"], "cgroupfs");
        assert_eq!(v["failCgroupV1"], false);
        assert_eq!(
            v["containerRuntimeEndpoint"],
            "unix:///state/node/containerd/containerd.sock"
        );
        assert_eq!(v["clusterDNS"][0], "10.213.7.2");
    }

    #[test]
    fn cni_bridge_hands_out_the_pod_subnet() {
        let v: serde_json::Value = serde_json::from_str(&cni_conflist(&layout())).expect("json");
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["bridge"], CNI_BRIDGE);
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.214.7.0/24");
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn kube_proxy_masquerades_service_traffic_of_the_pod_subnet() {
        let v: serde_json::Value = serde_json::from_str(&kube_proxy_yaml(&layout())).expect("json");
        assert_eq!(v["clusterCIDR"], "10.214.7.0/24");
        assert_eq!(v["iptables"]["masqueradeAll"], true);
        assert_eq!(v["hostnameOverride"], "node-a");
    }

    #[test]
    fn corefile_binds_the_node_address_only() {
        let text = corefile(&layout(), "ctx");
        assert!(text.contains("bind 10.213.7.2"));
        assert!(text.contains("kubeconfig /state/node/kubeconfig ctx"));
        assert!(!text.contains("forward"));
    }
}
