//! Loading a binary's configuration: its defaults, then the TOML file,
//! then `DASH_` environment variables (`DASH_UPLINK__URL` for `uplink.url`).
//! Only variables that start with one of the binary's top-level keys are
//! read, so an unrelated `DASH_*` in the environment is not an unknown key.

use std::path::Path;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};

/// `T::default()`, overridden by `file` (which must exist, when given) and
/// then by the environment; `top_level` lists `T`'s top-level keys.
pub fn load<T>(file: Option<&Path>, top_level: &'static [&'static str]) -> anyhow::Result<T>
where
    T: Default + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        if !file.exists() {
            bail!("config file {} does not exist", file.display());
        }
        figment = figment.merge(Toml::file(file));
    }
    let env = Env::prefixed("DASH_").split("__").filter(move |k| {
        let k = k.as_str().to_ascii_lowercase();
        top_level.iter().any(|t| k.starts_with(t))
    });
    let what = file.map_or_else(
        || "invalid configuration".to_owned(),
        |f| format!("invalid configuration in {}", f.display()),
    );
    figment.merge(env).extract().context(what)
}
