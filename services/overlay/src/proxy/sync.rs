//! What is installed, and so what the next sync must send: the whole table
//! after start or after a failed transaction (the kernel's state is then
//! unknown to us), else only the difference.

use std::time::Duration;

use skiff_client::Backoff;

use super::rules::Ruleset;
use super::script;

/// Waits between full resyncs while transactions keep failing: a second,
/// doubling up to half a minute.
const BACKOFF: Backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(30) };

pub struct Syncer {
    table: String,
    /// None: nothing is known to be installed; the next script is a full one.
    installed: Option<Ruleset>,
    failures: u32,
}

impl Syncer {
    pub fn new(table: String) -> Self {
        Self { table, installed: None, failures: 0 }
    }

    /// The script that makes the table `desired`; None when it already is.
    pub fn plan(&self, desired: &Ruleset) -> Option<String> {
        match &self.installed {
            None => Some(script::full(&self.table, desired)),
            Some(installed) => script::diff(&self.table, installed, desired),
        }
    }

    /// The planned script went in.
    pub fn applied(&mut self, desired: Ruleset) {
        self.installed = Some(desired);
        self.failures = 0;
    }

    /// The planned script failed: resync everything, after the returned wait.
    pub fn failed(&mut self) -> Duration {
        self.installed = None;
        let wait = BACKOFF.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::rules::Chain;

    fn ruleset(rule: &str) -> Ruleset {
        let mut rs = Ruleset::default();
        rs.chains.insert("c".into(), Chain { base: None, rules: vec![rule.into()] });
        rs
    }

    #[test]
    fn full_first_then_diffs_and_full_again_after_a_failure() {
        let mut s = Syncer::new("t".into());
        let a = ruleset("accept");
        assert!(s.plan(&a).unwrap().starts_with("add table ip t\ndelete table ip t\n"));
        s.applied(a.clone());
        assert_eq!(s.plan(&a), None);
        let b = ruleset("drop");
        assert_eq!(s.plan(&b).unwrap(), "flush chain ip t c\nadd rule ip t c drop\n");
        assert_eq!(s.failed(), Duration::from_secs(1));
        assert_eq!(s.failed(), Duration::from_secs(2));
        assert!(s.plan(&b).unwrap().starts_with("add table ip t\ndelete table ip t\n"));
        for _ in 0..10 {
            s.failed();
        }
        assert_eq!(s.failed(), BACKOFF.max);
        s.applied(b.clone());
        assert_eq!(s.plan(&b), None);
        assert_eq!(s.failed(), Duration::from_secs(1), "back-off starts over after a success");
    }
}
