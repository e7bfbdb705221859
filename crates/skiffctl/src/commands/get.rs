//! `skiffctl get KIND [NAME...]`: a table, or the objects as JSON, YAML or
//! names; with `-w`, then every change as it happens.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use chrono::Utc;
use futures::StreamExt;
use serde_json::Value;
use skiff_api::{meta, KindInfo};
use skiff_client::{Client, ListParams, WatchEvent};

use super::{error_message, AlreadyReported, Globals};
use crate::resource;
use crate::table::{self, format_row, Printer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
    Name,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kind, e.g. pods, deploy, svc, nodes.
    pub kind: String,
    /// Objects to show (every one when none is named).
    pub names: Vec<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. app=web,tier!=db.
    #[arg(short = 'l', long = "selector")]
    pub selector: Option<String>,
    /// Field selector, e.g. spec.nodeName=node-1.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Output>,
    /// After listing, print changes until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

pub async fn run(globals: &Globals, args: Args) -> Result<()> {
    let info = resource::lookup(&args.kind)?;
    if !args.names.is_empty() && args.selector.is_some() {
        bail!("names cannot be given together with a label selector");
    }
    if !args.names.is_empty() && args.all_namespaces {
        bail!("an object cannot be retrieved by name across all namespaces");
    }
    let namespace = if args.all_namespaces { "" } else { resource::scope(info, &globals.namespace) };
    let client = globals.client()?;
    let params = ListParams {
        label_selector: args.selector.clone().unwrap_or_default(),
        field_selector: args.field_selector.clone().unwrap_or_default(),
        ..Default::default()
    };

    let view = View { info, output: args.output, all_namespaces: args.all_namespaces };
    let mut failed = false;
    let (items, resource_version) = if args.names.is_empty() {
        let list = client.list(info.kind, namespace, &params).await?;
        (list.items, list.resource_version)
    } else {
        let mut items = Vec::new();
        for name in &args.names {
            match client.get(info.kind, namespace, name).await {
                Ok(obj) => items.push(obj),
                Err(e) => {
                    eprintln!("error: {}", error_message(&e.into()));
                    failed = true;
                }
            }
        }
        (items, String::new())
    };

    if items.is_empty() && args.names.is_empty() {
        eprintln!("{}", no_resources(info, namespace));
    }
    let single = args.names.len() == 1;
    let table = matches!(args.output, None | Some(Output::Wide));
    // Nothing to show yet: a watch prints its header with the first change,
    // and names that all failed were reported already.
    let nothing = items.is_empty() && (args.watch || !args.names.is_empty());
    let mut widths = None;
    if args.watch && !table {
        // A watch prints objects one by one, never wrapped in a List.
        items.iter().try_for_each(|obj| view.print_change(obj, &mut widths))?;
    } else if !nothing {
        widths = Some(view.print(&items, single, &resource_version)?);
    }

    if args.watch {
        watch(&client, &view, namespace, &args, params, resource_version, &mut widths).await?;
    }
    if failed {
        return Err(AlreadyReported.into());
    }
    Ok(())
}

/// `No resources found in demo namespace.`, as kubectl says it.
fn no_resources(info: &KindInfo, namespace: &str) -> String {
    if info.namespaced && !namespace.is_empty() {
        format!("No resources found in {namespace} namespace.")
    } else {
        "No resources found".to_string()
    }
}

/// Prints changes from `resource_version` on. A watch the server ends is
/// resumed where it stopped; one whose version expired starts over with a
/// fresh list.
async fn watch(
    client: &Client,
    view: &View,
    namespace: &str,
    args: &Args,
    mut params: ListParams,
    mut resource_version: String,
    widths: &mut Option<Vec<usize>>,
) -> Result<()> {
    let names: BTreeSet<&str> = args.names.iter().map(String::as_str).collect();
    if let [name] = args.names.as_slice() {
        let by_name = format!("metadata.name={name}");
        params.field_selector =
            if params.field_selector.is_empty() { by_name } else { format!("{},{by_name}", params.field_selector) };
    }
    if resource_version.is_empty() {
        // Objects fetched by name carry no list version: start from a list.
        resource_version = client.list(view.info.kind, namespace, &params).await?.resource_version;
    }
    loop {
        let mut stream = client.watch(view.info.kind, namespace, &params, &resource_version).await?;
        while let Some(event) = stream.next().await {
            let obj = match event {
                Ok(WatchEvent::Bookmark(rv)) => {
                    resource_version = rv;
                    continue;
                }
                Ok(WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)) => o,
                Err(e) if e.is_expired() => {
                    let list = client.list(view.info.kind, namespace, &params).await?;
                    resource_version = list.resource_version;
                    for obj in list.items.iter().filter(|o| names.is_empty() || names.contains(meta::name(o))) {
                        view.print_change(obj, widths)?;
                    }
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            resource_version = meta::resource_version(&obj).to_string();
            if names.is_empty() || names.contains(meta::name(&obj)) {
                view.print_change(&obj, widths)?;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// How objects are printed for one `get`.
struct View {
    info: &'static KindInfo,
    output: Option<Output>,
    all_namespaces: bool,
}

impl View {
    fn printer(&self) -> Printer {
        let wide = self.output == Some(Output::Wide);
        Printer { info: self.info, wide, all_namespaces: self.all_namespaces, now: Utc::now() }
    }

    /// Prints the objects first listed; returns the table's column widths.
    fn print(&self, items: &[Value], single: bool, resource_version: &str) -> Result<Vec<usize>> {
        match self.output {
            None | Some(Output::Wide) => {
                let mut sorted: Vec<&Value> = items.iter().collect();
                if self.info.kind == "Event" {
                    sorted.sort_by_key(|e| table::parse_time(table::event_time(e)));
                }
                let table = self.printer().table(sorted);
                if !table.rows.is_empty() {
                    out!("{}", table.render());
                }
                Ok(table.widths())
            }
            Some(Output::Name) => {
                items.iter().for_each(|o| outln!("{}", resource::object_ref(self.info, meta::name(o))));
                Ok(Vec::new())
            }
            Some(format @ (Output::Json | Output::Yaml)) => {
                let doc = match items {
                    [one] if single => one.clone(),
                    _ => table::list_object(self.info, items.to_vec(), resource_version),
                };
                match format {
                    Output::Json => out!("{}", table::to_json(&doc)),
                    _ => out!("{}", table::to_yaml(&doc)?),
                }
                Ok(Vec::new())
            }
        }
    }

    /// Prints one object seen by the watch: a row (the header first if none
    /// was printed yet), a name, or a whole object.
    fn print_change(&self, obj: &Value, widths: &mut Option<Vec<usize>>) -> Result<()> {
        match self.output {
            None | Some(Output::Wide) => {
                let printer = self.printer();
                let widths = widths.get_or_insert_with(|| {
                    let table = printer.table([obj]);
                    out!("{}", format_row(&table.header, &table.widths()));
                    table.widths()
                });
                out!("{}", format_row(&printer.row(obj), widths));
            }
            Some(Output::Name) => outln!("{}", resource::object_ref(self.info, meta::name(obj))),
            Some(Output::Json) => out!("{}", table::to_json(obj)),
            Some(Output::Yaml) => out!("---\n{}", table::to_yaml(obj)?),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_where_nothing_was_found() {
        let pods = resource::lookup("po").unwrap();
        assert_eq!(no_resources(pods, "demo"), "No resources found in demo namespace.");
        assert_eq!(no_resources(pods, ""), "No resources found");
        assert_eq!(no_resources(resource::lookup("no").unwrap(), ""), "No resources found");
    }
}
