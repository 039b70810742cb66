//! Remote models (`[remote.NAME]`): the key and CA files as the daemon reads them, and one
//! health check of the upstream (`GET {url}/models`, which must list the model).

use std::time::{Duration, Instant};

use super::{Check, Ctx};
use crate::remote::Upstream;

/// Longest a doctor check of one upstream waits, whatever its configured timeouts.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

pub fn check_remotes(ctx: &Ctx) -> Vec<Check> {
    let remotes = &ctx.config.remote;
    if remotes.is_empty() {
        return Vec::new();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![Check::fail(
                "remote models",
                format!("cannot start the network runtime: {e}"),
                "check the machine's resources",
            )]
        }
    };
    remotes
        .iter()
        .map(|(name, rc)| {
            let label = format!("remote {name}");
            let up = match Upstream::new(name, rc.clone()) {
                Ok(u) => u,
                Err(e) => {
                    return Check::fail(
                        label,
                        e.to_string(),
                        "fix the entry's files: the key file readable only by the daemon \
                         (chmod 600), the CA file a PEM bundle",
                    )
                }
            };
            let started = Instant::now();
            // The timer is made inside the runtime (it needs its clock).
            match rt.block_on(async { tokio::time::timeout(PROBE_LIMIT, up.probe()).await }) {
                Err(_) => Check::fail(
                    label,
                    format!("no answer within {} s", PROBE_LIMIT.as_secs()),
                    "check that the upstream runs and this machine may reach it",
                ),
                Ok(Err(e)) => Check::fail(
                    label,
                    e.to_string(),
                    "check the upstream's url, that it runs, and its key (api_key_file)",
                ),
                Ok(Ok(ids)) if !ids.iter().any(|i| i == up.upstream_model()) => Check::fail(
                    label,
                    format!(
                        "the upstream does not serve `{}` (it serves: {})",
                        up.upstream_model(),
                        ids.join(", ")
                    ),
                    format!("set remote.{name}.model to one of the models it serves"),
                ),
                Ok(Ok(_)) => Check::ok(
                    label,
                    format!(
                        "serves `{}` ({} ms)",
                        up.upstream_model(),
                        started.elapsed().as_millis()
                    ),
                ),
            }
        })
        .collect()
}
