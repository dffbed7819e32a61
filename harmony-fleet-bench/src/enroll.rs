//! Enrolling a fleet through the real operator (adr/0016): N devices, their keys approved
//! beforehand (`spec.publicKey`, as `harmony-fleet-deploy device approve` writes it), ask to join
//! through the bootstrap identity, `concurrency` at a time; the operator's identity service (in
//! its own process, so its CPU is its own) signs each credential and records it on the `Device`
//! (finalizer and `status.enrollment`). Reported: approval time (the API server's), enrollment
//! time, operator and nats-server CPU.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use harmony_fleet_contracts::device::Inventory;
use harmony_fleet_contracts::identity::{
    BOOTSTRAP_INBOX_PREFIX, ENROLL_SUBJECT, EnrollReply, EnrollRequest,
};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::trust::TrustChain;
use harmony_fleet_operator::crd::Device;
use kube::Api;
use kube::api::{Patch, PatchParams};
use nkeys::KeyPair;

use crate::error::{Error, Result};
use crate::operator::{OperatorProcess, OperatorSpec};
use crate::procstat;
use crate::reconnect::trusted_nats;
use crate::report::{Table, num};
use crate::scale::ControlPlane;

/// What to run.
#[derive(Clone, Debug)]
pub struct EnrollOptions {
    /// Devices.
    pub devices: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// The executable with the `operator` subcommand.
    pub operator_exe: PathBuf,
    /// Where results go.
    pub out_dir: PathBuf,
}

/// Column names.
pub const COLUMNS: [&str; 7] = [
    "devices",
    "in flight",
    "approve s",
    "enroll s",
    "enrollments/s",
    "operator CPU s",
    "nats CPU s",
];

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn write_file(dir: &std::path::Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(path)
}

/// Runs it and writes `enroll.csv`/`.md`.
pub async fn run(opts: &EnrollOptions) -> Result<Table> {
    let jwt_err = |what: &'static str| move |e| Error::nats(what, e);
    let cp = ControlPlane::start().await?;
    let chain = TrustChain::generate();
    let nats = trusted_nats(&chain).await?;
    let files = opts.out_dir.join("enroll");
    std::fs::create_dir_all(&files).map_err(|e| Error::io("creating the bench dir", e))?;
    let t = now();
    let operator_creds = write_file(
        &files,
        "operator.creds",
        &chain.operator_creds(t).map_err(jwt_err("operator creds"))?,
    )?;
    let system_creds = write_file(
        &files,
        "system.creds",
        &chain
            .claims_pusher_creds(t)
            .map_err(jwt_err("system creds"))?,
    )?;
    let signer = write_file(
        &files,
        "signer.json",
        &serde_json::to_string(&chain.signer_seeds().map_err(jwt_err("signer"))?)
            .unwrap_or_default(),
    )?;
    let mut operator = OperatorProcess::spawn(&OperatorSpec {
        exe: opts.operator_exe.clone(),
        kubeconfig: cp.kubeconfig().to_owned(),
        nats_url: nats.url(),
        namespace: "enroll-bench".into(),
        log_file: files.join("operator.log"),
        device_resources: false,
        extra_args: vec![
            "--create-buckets".into(),
            format!("--nats-creds={}", operator_creds.display()),
            format!("--identity-signer={}", signer.display()),
            format!("--identity-system-creds={}", system_creds.display()),
        ],
    })?;
    operator.wait_converged(Duration::from_secs(60)).await?;

    let devices: Vec<(DeviceId, KeyPair)> = (0..opts.devices)
        .map(|i| {
            format!("enroll-{i}")
                .parse::<DeviceId>()
                .map(|d| (d, KeyPair::new_user()))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::nats("device ids", e))?;

    // Approve every key first (what an admin, or a pre-approval script, does).
    let api: Api<Device> = Api::all(cp.client().clone());
    let started = Instant::now();
    let approved: Vec<std::result::Result<(), String>> = futures::stream::iter(&devices)
        .map(|(device, key)| {
            let api = api.clone();
            async move {
                let body = serde_json::json!({
                    "apiVersion": "fleet.nationtech.io/v1alpha1",
                    "kind": "Device",
                    "metadata": { "name": device.as_str() },
                    "spec": { "publicKey": key.public_key() },
                });
                api.patch(
                    device.as_str(),
                    &PatchParams::apply("fleet-bench").force(),
                    &Patch::Apply(body),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let approve_secs = started.elapsed().as_secs_f64();
    if let Some(Err(e)) = approved.iter().find(|r| r.is_err()) {
        return Err(Error::nats("approving a device", e.clone()));
    }
    let bootstrap = async_nats::ConnectOptions::new()
        .credentials(
            &chain
                .bootstrap_creds(now(), None)
                .map_err(jwt_err("bootstrap"))?,
        )
        .map_err(|e| Error::nats("bootstrap creds", e))?
        .custom_inbox_prefix(BOOTSTRAP_INBOX_PREFIX)
        .request_timeout(Some(Duration::from_secs(60)))
        .connect(nats.url())
        .await
        .map_err(|e| Error::nats("connecting the bootstrap user", e))?;
    let inventory = Inventory {
        hostname: "bench".into(),
        arch: std::env::consts::ARCH.into(),
        os: std::env::consts::OS.into(),
        os_release: None,
        kernel_version: None,
        cpu_count: 1,
        memory_bytes: 1 << 30,
    };
    let nats_pid = nats.pid().unwrap_or(0);
    let (op0, nats0) = (operator.sample()?, procstat::sample(nats_pid)?);
    let started = Instant::now();
    let answers: Vec<std::result::Result<(), String>> = futures::stream::iter(&devices)
        .map(|(device, key)| {
            let bootstrap = bootstrap.clone();
            let inventory = inventory.clone();
            async move {
                // A request that arrives before the operator saw the approval is held until it
                // does; one answered `Pending` is asked again.
                for _ in 0..5 {
                    let request =
                        EnrollRequest::signed(device.clone(), key, inventory.clone(), now())
                            .map_err(|e| e.to_string())?;
                    let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
                    let reply = bootstrap
                        .request(ENROLL_SUBJECT, body.into())
                        .await
                        .map_err(|e| format!("{device}: {e}"))?;
                    match serde_json::from_slice::<EnrollReply>(&reply.payload) {
                        Ok(EnrollReply::Issued { .. }) => return Ok(()),
                        Ok(EnrollReply::Pending { .. }) => continue,
                        other => return Err(format!("{device}: {other:?}")),
                    }
                }
                Err(format!("{device}: still pending"))
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let enroll_secs = started.elapsed().as_secs_f64();
    let (op1, nats1) = (operator.sample()?, procstat::sample(nats_pid)?);
    if let Some(Err(e)) = answers.iter().find(|r| r.is_err()) {
        return Err(Error::nats("an enrollment", e.clone()));
    }
    operator.stop().await;

    let mut table = Table::new(&COLUMNS);
    table.rows.push(vec![
        opts.devices.to_string(),
        opts.concurrency.to_string(),
        num(Some(approve_secs), 1),
        num(Some(enroll_secs), 1),
        num(Some(opts.devices as f64 / enroll_secs), 0),
        num(Some(op1.cpu_seconds - op0.cpu_seconds), 1),
        num(Some(nats1.cpu_seconds - nats0.cpu_seconds), 1),
    ]);
    let path = table.write(&opts.out_dir, "enroll")?;
    eprintln!("enroll: wrote {}", path.display());
    println!("{}", table.markdown());
    Ok(table)
}
