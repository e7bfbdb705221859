//! Names that two or more components must spell alike: labels, annotations,
//! finalizers, taints and namespaces that one writes and another reads. A
//! typo in one copy is a silent disagreement, so each lives here once.
//!
//! Names Kubernetes defines keep its spelling; skiff's own live under the
//! one domain `skiff.io`.

/// The finalizer a Namespace carries until the namespace controller has
/// emptied it (`spec.finalizers`).
pub const NAMESPACE_FINALIZER: &str = "kubernetes";

/// Namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", NODE_LEASE_NAMESPACE];

/// Where kubelets keep their nodes' heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The ConfigMap (in kube-system) through which tests and benchmarks stop
/// and revive hollow nodes; hollow kubelets read it by name.
pub const HOLLOW_CONTROL: &str = "hollow-control";

/// A Deployment's ReplicaSets carry their revision here; `rollout history`
/// and `undo` read it.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// The label a Deployment adds to a ReplicaSet's selector and pods, with
/// the hash of the pod template, so that two ReplicaSets never share pods.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// A DaemonSet's pods carry the hash of the template they were made from,
/// so a rolling update tells old pods from new.
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// The labels the apiserver gives a Job's selector and pod template when
/// the Job does not bring its own selector (`spec.manualSelector`): the
/// Job's uid, so two Jobs of one name in turn never share pods, and its
/// name. The unprefixed forms are the ones older clients select on.
pub const JOB_CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_CONTROLLER_UID_LABEL: &str = "controller-uid";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";

/// An Indexed Job's pod carries its index as this annotation and label
/// (and as `JOB_COMPLETION_INDEX` in its containers' environment).
pub const JOB_COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// The finalizer a Job's pods carry until the Job controller has counted
/// them as succeeded or failed, so a finished pod deleted at once is still
/// counted exactly once.
pub const JOB_TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// A StatefulSet's pod carries its own name and its ordinal as labels, so
/// a Service can select one pod of the set.
pub const STATEFULSET_POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const STATEFULSET_POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The StorageClass a claim without one gets carries this annotation
/// with the value "true".
pub const DEFAULT_STORAGE_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// skiff's built-in provisioner: a folder on the node that first runs a
/// pod of the claim, and the StorageClass the apiserver makes for it.
pub const LOCAL_PATH_PROVISIONER: &str = "skiff.io/local-path";
pub const LOCAL_PATH_STORAGE_CLASS: &str = "local-path";

/// Who provisioned a PersistentVolume (`pv.kubernetes.io/provisioned-by`).
pub const PROVISIONED_BY_ANNOTATION: &str = "pv.kubernetes.io/provisioned-by";

/// The node the scheduler chose for the first pod of a claim whose class
/// waits for a consumer: the volume is provisioned there.
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";

/// The time (RFC 3339, in the CronJob's zone) a CronJob's Job was
/// scheduled for.
pub const CRONJOB_SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// A Job made from a CronJob by hand (`create job --from=cronjob/NAME`)
/// carries `cronjob.kubernetes.io/instantiate: manual`.
pub const CRONJOB_INSTANTIATE_ANNOTATION: &str = "cronjob.kubernetes.io/instantiate";

/// Why a Deployment changed (`kubectl annotate … kubernetes.io/change-cause`).
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

/// The W3C `traceparent` of the traced request that created an object. The
/// controllers, the scheduler and the kubelet make the work they do for the
/// object part of that trace, so one `skiffctl apply` of a Deployment is one
/// trace down to its pods' starts.
pub const TRACE_CONTEXT_ANNOTATION: &str = "skiff.io/trace-context";

/// Taints the node lifecycle controller puts on nodes and the scheduler
/// and taint eviction honour.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
/// Put on a node by its operator once it is known to be shut down: its
/// pods are deleted at once instead of waiting for its kubelet.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// Endpoints the endpoints controller owns carry this label (as
/// EndpointSlices carry `endpointslice.kubernetes.io/managed-by`).
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.skiff.io/managed-by";

/// Nodes with GPUs are labelled so that workloads can select them.
pub const GPU_LABEL: &str = "skiff.io/gpu";

/// A node's WireGuard public key and endpoint, published by its overlay
/// agent for the others to peer with.
pub const WIREGUARD_PUBLIC_KEY_ANNOTATION: &str = "skiff.io/wireguard-public-key";
pub const WIREGUARD_ENDPOINT_ANNOTATION: &str = "skiff.io/wireguard-endpoint";

/// The API group of Roles, ClusterRoles and their bindings, which a
/// binding's roleRef and its User and Group subjects name.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Kubernetes' privileged group: its members may do anything.
pub const MASTERS_GROUP: &str = "system:masters";

/// The group of every kubelet's identity (user `system:node:<node name>`).
pub const NODES_GROUP: &str = "system:nodes";

/// A kubelet acts as the user `system:node:<node name>`.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The node a `system:node:<node name>` user name stands for, if it names one.
pub fn node_name(user: &str) -> Option<&str> {
    user.strip_prefix(NODE_USER_PREFIX).filter(|n| !n.is_empty())
}

/// Bootstrap tokens (`ID.SECRET`), as kubeadm's: each is a Secret
/// `kube-system/bootstrap-token-ID` of this type, and authenticates as the
/// user `system:bootstrap:ID` in [`BOOTSTRAPPERS_GROUP`], which may only ask
/// for a node's certificate.
pub const BOOTSTRAP_TOKEN_SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const BOOTSTRAP_TOKEN_SECRET_PREFIX: &str = "bootstrap-token-";
pub const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";

/// The signers of CertificateSigningRequests skiff-controller-manager
/// approves and signs for nodes: a kubelet's client certificate, and its
/// API's serving certificate.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// A ServiceAccount acts as the user `system:serviceaccount:<namespace>:<name>`.
pub const SERVICE_ACCOUNT_USER_PREFIX: &str = "system:serviceaccount:";

/// The users skiff's control-plane components act as; the apiserver's
/// bootstrap policy binds each to the ClusterRole of the same name.
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
pub const OVERLAY_USER: &str = "system:skiff-overlay";
pub const DNS_USER: &str = "system:skiff-dns";
pub const INGRESS_USER: &str = "system:skiff-ingress";
/// The apiserver, when it calls a kubelet's API (logs, exec, stats), as
/// kubeadm names its client certificate.
pub const APISERVER_KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// The Leases the singleton components compete for, unless `--lease-name`
/// says otherwise; the bootstrap policy lets each update only its own.
pub const SCHEDULER_LEASE: &str = "skiff-scheduler";
pub const CONTROLLER_MANAGER_LEASE: &str = "skiff-controller-manager";

/// The finalizers a delete with `propagationPolicy: Foreground` or
/// `Orphan` puts on the owner; the garbage collector carries them out.
pub const FOREGROUND_DELETION: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";

/// The owner kinds the garbage collector collects dependents of (each
/// with its dependents' kind). A delete of any other kind has nothing to
/// propagate, so it takes no propagation finalizer that nothing would remove.
pub const COLLECTED_OWNERS: &[(&str, &str)] = &[
    ("ReplicaSet", "Pod"),
    ("Deployment", "ReplicaSet"),
    ("DaemonSet", "Pod"),
    ("StatefulSet", "Pod"),
    ("StatefulSet", "PersistentVolumeClaim"),
    ("Pod", "PersistentVolumeClaim"),
    ("Job", "Pod"),
    ("CronJob", "Job"),
];
