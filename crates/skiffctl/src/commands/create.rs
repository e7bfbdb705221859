//! `skiffctl create namespace NAME` and `skiffctl create job NAME`
//! (`--image IMAGE [-- COMMAND…]`, or `--from=cronjob/NAME`), as kubectl's.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use skiff_api::well_known::CRONJOB_INSTANTIATE_ANNOTATION;

use super::Globals;
use crate::resource;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Create a namespace.
    #[command(visible_alias = "ns")]
    Namespace { name: String },
    /// Create a Job running an image, or a run of a CronJob now.
    Job {
        name: String,
        /// The image of the Job's one container.
        #[arg(long, conflicts_with = "from")]
        image: Option<String>,
        /// The CronJob whose template the Job is made from (`cronjob/NAME`).
        #[arg(long)]
        from: Option<String>,
        /// The container's command (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let client = globals.client()?;
    let (info, name, obj) = match args.what {
        What::Namespace { name } => {
            let info = resource::lookup("Namespace")?;
            (info, name.clone(), json!({"apiVersion": info.api_version, "kind": info.kind, "metadata": {"name": name}}))
        }
        What::Job { name, image, from, command } => {
            let info = resource::lookup("Job")?;
            let job = match (image, from) {
                (Some(image), None) => job_running(&name, &image, command),
                (None, Some(from)) => {
                    let cronjob = from
                        .strip_prefix("cronjob/")
                        .or_else(|| from.strip_prefix("cronjobs/"))
                        .or_else(|| from.strip_prefix("cj/"))
                        .with_context(|| format!("--from={from}: only cronjob/NAME is supported"))?;
                    let cj = client.get("CronJob", &globals.namespace, cronjob).await?;
                    job_from_cronjob(&name, &cj)
                }
                _ => bail!("create job: one of --image and --from=cronjob/NAME is required"),
            };
            (info, name, job)
        }
    };
    let namespace = resource::scope(info, &globals.namespace);
    client.create(info.kind, namespace, &obj).await?;
    outln!("{} created", resource::object_ref(info, &name));
    Ok(())
}

/// A Job of one container, never restarted, as `kubectl create job --image`.
fn job_running(name: &str, image: &str, command: Vec<String>) -> Value {
    let mut container = json!({"name": name, "image": image});
    if !command.is_empty() {
        container["command"] = command.into();
    }
    json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [container], "restartPolicy": "Never"}}}
    })
}

/// A Job from a CronJob's template, owned by it and marked as started by
/// hand, as `kubectl create job --from=cronjob/NAME`.
fn job_from_cronjob(name: &str, cj: &Value) -> Value {
    let template = &cj["spec"]["jobTemplate"];
    let mut annotations = template.pointer("/metadata/annotations").cloned().unwrap_or_else(|| json!({}));
    annotations[CRONJOB_INSTANTIATE_ANNOTATION] = "manual".into();
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name,
            "labels": template.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({})),
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": cj["metadata"]["name"],
                "uid": cj["metadata"]["uid"], "controller": true,
            }],
        },
        "spec": template["spec"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_from_cron_jobs_keep_the_template_and_name_their_owner() {
        let cj = json!({
            "metadata": {"name": "backup", "uid": "cj-1"},
            "spec": {"schedule": "@daily", "jobTemplate": {
                "metadata": {"labels": {"app": "backup"}},
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}}
        });
        let job = job_from_cronjob("backup-now", &cj);
        assert_eq!(job["metadata"]["annotations"][CRONJOB_INSTANTIATE_ANNOTATION], "manual");
        assert_eq!(job["metadata"]["labels"]["app"], "backup");
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "cj-1");
        assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["image"], "busybox");

        let run = job_running("once", "busybox", vec!["echo".into(), "hi".into()]);
        assert_eq!(run["spec"]["template"]["spec"]["containers"][0]["command"], json!(["echo", "hi"]));
    }
}
