//! Alert rules, provisioned from TOML files (`alerts.rules_dir`, every
//! `*.toml` in it):
//!
//! ```toml
//! [[rule]]
//! name = "region-offline"        # unique in its tenant
//! tenant = "acme"
//! kind = "fleet_ratio"           # the share of devices in a state, per place of a kind
//! state = "offline"              # never_reported, online, offline, delayed, unknown
//! group_by = "region"            # the place kind each instance is (its subtree's devices)
//! above = 0.10                   # fires above 10 %
//! clear_below = 0.08             # clears at or below 8 % (default: above)
//! for_secs = 0                   # over the threshold this long before it fires
//! keep_firing_for_secs = 0       # cleared this long before it resolves
//! interval_secs = 30             # how often it is evaluated
//! severity = "critical"          # critical, error, warning, info
//! notify = ["pagerduty-ops"]     # contact points
//! labels = { team = "ops" }
//! ```
//!
//! Devices that never reported are not counted. A device whose gateway is
//! offline is `unknown`, not `offline`, so a gateway cut does not page for
//! each of its devices.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use dash_shared::{Micros, TenantId};
use serde::{Deserialize, Serialize};

use super::state::Thresholds;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The share of a place's devices in a liveness state.
    FleetRatio,
}

/// How loud an alert is (PagerDuty's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    #[default]
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub tenant: String,
    pub kind: Kind,
    /// fleet_ratio: the liveness state counted.
    pub state: String,
    /// fleet_ratio: the place kind each instance stands for.
    pub group_by: String,
    pub above: f64,
    pub clear_below: Option<f64>,
    #[serde(default)]
    pub for_secs: u64,
    #[serde(default)]
    pub keep_firing_for_secs: u64,
    pub interval_secs: Option<u64>,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub notify: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

const STATES: [&str; 5] = ["never_reported", "online", "offline", "delayed", "unknown"];

impl Rule {
    /// What is wrong with it, each problem naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let at = format!("rule {:?}", self.name);
        let id_ok = |s: &str| {
            (1..=64).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if !id_ok(&self.name) {
            out.push(format!(
                "{at}: name: 1 to 64 letters, digits, '.', '_' or '-'"
            ));
        }
        if let Err(e) = TenantId::new(self.tenant.clone()) {
            out.push(format!("{at}: tenant: {e}"));
        }
        if !STATES.contains(&self.state.as_str()) {
            out.push(format!(
                "{at}: state {:?}: one of {}",
                self.state,
                STATES.join(", ")
            ));
        }
        if self.group_by.is_empty() {
            out.push(format!(
                "{at}: group_by: the place kind to group by, e.g. \"region\""
            ));
        }
        if !self.above.is_finite() || !(0.0..1.0).contains(&self.above) {
            out.push(format!(
                "{at}: above: a share from 0 to below 1, e.g. 0.1 for 10 %"
            ));
        }
        if let Some(c) = self.clear_below
            && (!c.is_finite() || c > self.above || c < 0.0)
        {
            out.push(format!(
                "{at}: clear_below: from 0 up to above ({})",
                self.above
            ));
        }
        if self.interval_secs == Some(0) {
            out.push(format!("{at}: interval_secs must be at least 1"));
        }
        out
    }

    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            above: self.above,
            clear_at: self.clear_below.unwrap_or(self.above),
            for_us: (self.for_secs as Micros).saturating_mul(1_000_000),
            keep_firing_for_us: (self.keep_firing_for_secs as Micros).saturating_mul(1_000_000),
        }
    }

    pub fn interval(&self, default_secs: u64) -> std::time::Duration {
        std::time::Duration::from_secs(self.interval_secs.unwrap_or(default_secs))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<Rule>,
}

/// Every rule of the `*.toml` files in `dir`, checked; the error names the
/// file and the rule. Names are unique per tenant.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Rule>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("alerts.rules_dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        let file: File = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        for r in file.rule {
            problems.extend(
                r.problems()
                    .into_iter()
                    .map(|p| format!("{}: {p}", path.display())),
            );
            if rules
                .iter()
                .any(|o: &Rule| o.tenant == r.tenant && o.name == r.name)
            {
                problems.push(format!(
                    "{}: rule {:?} of {} is defined twice",
                    path.display(),
                    r.name,
                    r.tenant
                ));
            }
            rules.push(r);
        }
    }
    if !problems.is_empty() {
        bail!("alert rules:\n  {}", problems.join("\n  "));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_load_from_a_directory_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("fleet.toml"),
            r#"
            [[rule]]
            name = "region-offline"
            tenant = "acme"
            kind = "fleet_ratio"
            state = "offline"
            group_by = "region"
            above = 0.10
            clear_below = 0.08
            notify = ["pd"]
            "#,
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a rule").unwrap();
        let rules = load_dir(dir.path()).unwrap();
        assert_eq!(rules.len(), 1);
        let t = rules[0].thresholds();
        assert_eq!((t.above, t.clear_at, t.for_us), (0.10, 0.08, 0));
        std::fs::write(
            dir.path().join("bad.toml"),
            r#"
            [[rule]]
            name = "region-offline"
            tenant = "acme"
            kind = "fleet_ratio"
            state = "asleep"
            group_by = "region"
            above = 1.5
            clear_below = 2.0
            "#,
        )
        .unwrap();
        let e = load_dir(dir.path()).unwrap_err().to_string();
        for want in [
            "state \"asleep\"",
            "above: a share",
            "clear_below",
            "defined twice",
            "bad.toml",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        std::fs::write(dir.path().join("bad.toml"), "[[rule]]\nname = 1").unwrap();
        assert!(
            load_dir(dir.path())
                .unwrap_err()
                .to_string()
                .contains("bad.toml")
        );
    }
}
