//! The one set of informers every controller reads from, so that each kind
//! is listed and watched once per process however many controllers use it.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Endpoints, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota, Service,
};
use k8s_openapi::api::storage::v1::StorageClass;
use skiff_api::well_known::NODE_LEASE_NAMESPACE;
use skiff_client::{wait_all_synced, CacheSync, Client, Informer, ListParams, Object, Store};
use skiff_telemetry::Stop;
use tokio::task::JoinHandle;

/// Read access to every cache. Cheap to clone.
#[derive(Clone)]
pub struct Informers {
    pub pods: Store<Pod>,
    pub replicasets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub daemonsets: Store<DaemonSet>,
    pub statefulsets: Store<StatefulSet>,
    pub jobs: Store<Job>,
    pub cronjobs: Store<CronJob>,
    pub persistent_volume_claims: Store<PersistentVolumeClaim>,
    pub persistent_volumes: Store<PersistentVolume>,
    pub storage_classes: Store<StorageClass>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    pub nodes: Store<Node>,
    /// Node heartbeats, in kube-node-lease only.
    pub node_leases: Store<Lease>,
    pub namespaces: Store<Namespace>,
    pub services: Store<Service>,
    pub endpoints: Store<Endpoints>,
    pub certificate_requests: Store<CertificateSigningRequest>,
    pub resource_quotas: Store<ResourceQuota>,
}

impl Informers {
    /// Starts every informer; they run until `stop` is raised.
    pub fn start(client: &Client, stop: Stop) -> (Self, Vec<JoinHandle<()>>) {
        let mut runners = Vec::new();
        let informers = Self {
            pods: spawn(client.api::<Pod>(""), &stop, &mut runners),
            replicasets: spawn(client.api::<ReplicaSet>(""), &stop, &mut runners),
            deployments: spawn(client.api::<Deployment>(""), &stop, &mut runners),
            daemonsets: spawn(client.api::<DaemonSet>(""), &stop, &mut runners),
            statefulsets: spawn(client.api::<StatefulSet>(""), &stop, &mut runners),
            jobs: spawn(client.api::<Job>(""), &stop, &mut runners),
            cronjobs: spawn(client.api::<CronJob>(""), &stop, &mut runners),
            persistent_volume_claims: spawn(client.api::<PersistentVolumeClaim>(""), &stop, &mut runners),
            persistent_volumes: spawn(client.api::<PersistentVolume>(""), &stop, &mut runners),
            storage_classes: spawn(client.api::<StorageClass>(""), &stop, &mut runners),
            autoscalers: spawn(client.api::<HorizontalPodAutoscaler>(""), &stop, &mut runners),
            nodes: spawn(client.api::<Node>(""), &stop, &mut runners),
            node_leases: spawn(client.api::<Lease>(NODE_LEASE_NAMESPACE), &stop, &mut runners),
            namespaces: spawn(client.api::<Namespace>(""), &stop, &mut runners),
            services: spawn(client.api::<Service>(""), &stop, &mut runners),
            endpoints: spawn(client.api::<Endpoints>(""), &stop, &mut runners),
            certificate_requests: spawn(client.api::<CertificateSigningRequest>(""), &stop, &mut runners),
            resource_quotas: spawn(client.api::<ResourceQuota>(""), &stop, &mut runners),
        };
        (informers, runners)
    }

    /// Every cache, for controllers to wait on.
    pub fn all(&self) -> Vec<Arc<dyn CacheSync>> {
        vec![
            Arc::new(self.pods.clone()),
            Arc::new(self.replicasets.clone()),
            Arc::new(self.deployments.clone()),
            Arc::new(self.daemonsets.clone()),
            Arc::new(self.statefulsets.clone()),
            Arc::new(self.jobs.clone()),
            Arc::new(self.cronjobs.clone()),
            Arc::new(self.persistent_volume_claims.clone()),
            Arc::new(self.persistent_volumes.clone()),
            Arc::new(self.storage_classes.clone()),
            Arc::new(self.autoscalers.clone()),
            Arc::new(self.nodes.clone()),
            Arc::new(self.node_leases.clone()),
            Arc::new(self.namespaces.clone()),
            Arc::new(self.services.clone()),
            Arc::new(self.endpoints.clone()),
            Arc::new(self.certificate_requests.clone()),
            Arc::new(self.resource_quotas.clone()),
        ]
    }

    pub async fn wait_synced(&self) -> skiff_client::Result<()> {
        let all = self.all();
        wait_all_synced(&all.iter().map(|c| c.as_ref()).collect::<Vec<_>>()).await
    }
}

fn spawn<K: Object>(api: skiff_client::Api<K>, stop: &Stop, runners: &mut Vec<JoinHandle<()>>) -> Store<K> {
    let informer = Informer::new(api, ListParams::default());
    let store = informer.store();
    runners.push(tokio::spawn(informer.run(stop.raised())));
    store
}
