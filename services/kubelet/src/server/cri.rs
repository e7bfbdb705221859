//! Finding a pod's container in it by the
//! Kubernetes labels the kubelet puts on every container it creates.

use k8s_cri::v1::{Container, ContainerStatus};

use super::ServerError;
use crate::runtime::{labels, ContainerRuntime};

/// Which instance of a container a call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    /// The latest one (running, or the last to have run).
    Current,
    /// The one before it: what `logs --previous` shows after a restart.
    Previous,
}

/// Names a container of a pod.
#[derive(Debug, Clone)]
pub struct ContainerRef<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub container: &'a str,
}

/// The CRI container for `target`, newest attempt first.
pub async fn find_container(
    runtime: &dyn ContainerRuntime,
    target: &ContainerRef<'_>,
    instance: Instance,
) -> Result<Container, ServerError> {
    let containers = runtime
        .list_containers(&[
            (labels::POD_NAMESPACE, target.namespace),
            (labels::POD_NAME, target.pod),
            (labels::CONTAINER_NAME, target.container),
        ])
        .await?;
    pick(containers, instance).ok_or_else(|| {
        let (namespace, pod, container) =
            (target.namespace.to_string(), target.pod.to_string(), target.container.to_string());
        match instance {
            Instance::Current => ServerError::ContainerNotFound { namespace, pod, container },
            Instance::Previous => ServerError::PreviousNotFound { namespace, pod, container },
        }
    })
}

pub async fn container_status(runtime: &dyn ContainerRuntime, id: &str) -> Result<ContainerStatus, ServerError> {
    Ok(runtime.container_status(id).await?)
}

/// The restart count of a container instance: the kubelet's annotation,
/// else the CRI attempt (the kubelet sets both to the same number).
fn attempt(c: &Container) -> u32 {
    c.annotations
        .get(labels::RESTART_COUNT_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| c.metadata.as_ref().map_or(0, |m| m.attempt))
}

/// Newest attempt first (creation time breaks ties); the current instance
/// is the first, the previous one the second.
fn pick(mut containers: Vec<Container>, instance: Instance) -> Option<Container> {
    containers.sort_by_key(|c| std::cmp::Reverse((attempt(c), c.created_at)));
    let index = match instance {
        Instance::Current => 0,
        Instance::Previous => 1,
    };
    containers.into_iter().nth(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::ContainerMetadata;

    fn container(id: &str, attempt: u32, created_at: i64) -> Container {
        Container {
            id: id.into(),
            metadata: Some(ContainerMetadata { name: "app".into(), attempt }),
            created_at,
            ..Default::default()
        }
    }

    #[test]
    fn current_is_the_newest_attempt_and_previous_the_one_before() {
        let all = vec![container("a", 0, 10), container("c", 2, 30), container("b", 1, 20)];
        assert_eq!(pick(all.clone(), Instance::Current).unwrap().id, "c");
        assert_eq!(pick(all, Instance::Previous).unwrap().id, "b");
        let one = vec![container("a", 0, 10)];
        assert_eq!(pick(one.clone(), Instance::Current).unwrap().id, "a");
        assert!(pick(one, Instance::Previous).is_none());
        assert!(pick(vec![], Instance::Current).is_none());
    }

    #[test]
    fn the_restart_count_annotation_wins_over_the_attempt() {
        let mut older = container("old", 5, 10);
        older.annotations.insert(labels::RESTART_COUNT_ANNOTATION.into(), "0".into());
        let newer = container("new", 1, 20);
        assert_eq!(pick(vec![older, newer], Instance::Current).unwrap().id, "new");
    }
}
