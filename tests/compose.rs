//! docker-compose.yml end to end, on this machine's Docker engine: build
//! the images (scripts/images, dev profile), bring the stack up, apply the
//! sample app as a user would (`docker-compose run --rm skiffctl`) and
//! fetch it through the ingress on its published port; stop the leading
//! scheduler and controller-manager and the published apiserver and see
//! the other replicas carry on (a scale-up still gets scheduled and
//! started); stop a node and see its pods replaced on the other, still
//! served through the ingress; tear it all down and find nothing left.

#[path = "support/http.rs"]
mod http;

use std::time::Duration;

use skiff_testkit::compose::{build_images, Stack};

/// Images, containers and pods all start on a loaded 2-core machine here:
/// generous, and only ever waited on for a condition.
const TIMEOUT: Duration = Duration::from_secs(300);

fn wait<T>(stack: &Stack, what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    stack.wait_for(what, TIMEOUT, check).unwrap_or_else(|e| panic!("{e}\n--- logs ---\n{}", stack.logs()))
}

/// The host name (compose service) holding lease `name` in kube-system.
fn leader(stack: &Stack, name: &str) -> Result<String, String> {
    let lease = stack.get_json(&["lease", name, "-n", "kube-system"])?;
    let holder = lease["spec"]["holderIdentity"].as_str().ok_or("no holder yet")?;
    // Identities are HOSTNAME_RANDOM; the services' host names are theirs.
    Ok(holder.rsplit_once('_').map_or(holder, |(host, _)| host).to_string())
}

/// The nodes of the sample app's Running, not terminating, pods.
fn web_pods(stack: &Stack) -> Result<Vec<String>, String> {
    let pods = stack.get_json(&["pods", "-n", "demo", "-l", "app=web"])?;
    let items = pods["items"].as_array().ok_or("no items")?;
    Ok(items
        .iter()
        .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// The sample app's page through the ingress's published port.
fn fetch_through_ingress(stack: &Stack, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    let response = runtime
        .block_on(http::get(stack.http(), "demo.localtest.me", "/"))
        .map_err(|e| format!("GET through the ingress: {e}"))?;
    if response.status == 200 && response.body.contains("Hello from skiff") {
        Ok(())
    } else {
        Err(format!("GET through the ingress: {} {}", response.status, response.body))
    }
}

#[test]
fn the_compose_stack_serves_the_sample_app_and_survives_losing_leaders_and_a_node() {
    build_images("dev").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut stack = Stack::new("skiff-test");
    // A stopped node's pods move after 10 s + 5 s, not the 40 s + 300 s
    // Kubernetes (and the compose file) default to.
    stack.set("SKIFF_NODE_MONITOR_GRACE_PERIOD", "10s").set("SKIFF_UNREACHABLE_TOLERATION_SECONDS", "5");
    stack.compose(&["up", "-d"]).unwrap();

    wait(&stack, "both nodes Ready", || match stack.ready_nodes()? {
        2 => Ok(()),
        n => Err(format!("{n} of 2 nodes Ready")),
    });
    stack.compose(&["run", "--rm", "-T", "skiffctl", "apply", "-f", "/examples/sample-app.yaml"]).unwrap();
    wait(&stack, "the sample app through the ingress", || fetch_through_ingress(&stack, &runtime));

    // Cluster DNS from a pod: skiff-dns behind the kube-dns ClusterIP.
    let pods = stack.get_json(&["pods", "-n", "demo", "-l", "app=web"]).unwrap();
    let pod = pods["items"][0]["metadata"]["name"].as_str().expect("a web pod").to_string();
    let lookup = wait(&stack, "a pod to resolve the Service", || {
        stack.skiffctl(&["exec", "-n", "demo", &pod, "--", "nslookup", "web.demo.svc.cluster.local"])
    });
    assert!(lookup.contains("Address"), "nslookup from {pod}: {lookup}");

    // The leaders go, and so does the apiserver published on the host:
    // the other replicas take over and the cluster still acts.
    for lease in ["skiff-scheduler", "skiff-controller-manager"] {
        let first = wait(&stack, &format!("a {lease} leader"), || leader(&stack, lease));
        stack.compose(&["stop", "-t", "1", &first]).unwrap();
        wait(&stack, &format!("another {lease} leader"), || match leader(&stack, lease)? {
            now if now != first => Ok(()),
            now => Err(format!("{now} still holds the lease")),
        });
    }
    stack.compose(&["stop", "-t", "1", "apiserver-1"]).unwrap();
    wait(&stack, "the scale-up to be accepted", || {
        stack.skiffctl(&["scale", "deployment", "web", "-n", "demo", "--replicas", "3"])
    });
    wait(&stack, "3 web pods Running", || match web_pods(&stack)? {
        pods if pods.len() == 3 => Ok(()),
        pods => Err(format!("running on {pods:?}")),
    });

    // A node goes: once it is unreachable its pods are replaced on the
    // other, and the ingress serves from those.
    stack.compose(&["stop", "-t", "1", "node-2"]).unwrap();
    wait(&stack, "3 web pods Running on node-1", || match web_pods(&stack)? {
        pods if pods.len() == 3 && pods.iter().all(|n| n == "node-1") => Ok(()),
        pods => Err(format!("running on {pods:?}")),
    });
    wait(&stack, "the sample app through the ingress after losing node-2", || {
        // Several in a row: round robin must not land on a gone endpoint.
        (0..4).try_for_each(|_| fetch_through_ingress(&stack, &runtime))
    });

    stack.down().unwrap();
    let left = stack.leftovers();
    assert!(left.is_empty(), "docker-compose down left {left:?}");
}
