//! `skiffctl cordon NODE` and `skiffctl uncordon NODE`: mark a node
//! (un)schedulable through spec.unschedulable.

use anyhow::Result;
use serde_json::{json, Value};
use skiff_client::Client;

use super::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The node.
    pub node: String,
}

pub async fn cordon(globals: &Globals, args: Args) -> Result<()> {
    set_unschedulable(&globals.client()?, &args.node, true).await
}

pub async fn uncordon(globals: &Globals, args: Args) -> Result<()> {
    set_unschedulable(&globals.client()?, &args.node, false).await
}

/// Cordons or uncordons `node`, saying which (or that it already was).
pub async fn set_unschedulable(client: &Client, node: &str, unschedulable: bool) -> Result<()> {
    let current = client.get("Node", "", node).await?;
    let was = current.pointer("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false);
    let verb = if unschedulable { "cordoned" } else { "uncordoned" };
    if was == unschedulable {
        outln!("node/{node} already {verb}");
        return Ok(());
    }
    client.patch("Node", "", node, &patch(unschedulable)).await?;
    outln!("node/{node} {verb}");
    Ok(())
}

/// Uncordoning removes the field, as kubectl leaves it.
fn patch(unschedulable: bool) -> Value {
    json!({"spec": {"unschedulable": if unschedulable { Value::Bool(true) } else { Value::Null }}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cordon_sets_the_flag_and_uncordon_removes_it() {
        assert_eq!(patch(true), json!({"spec": {"unschedulable": true}}));
        assert_eq!(patch(false), json!({"spec": {"unschedulable": null}}));
    }
}
