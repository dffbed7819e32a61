//! Images for the node without a registry: podman builds (or already holds) an image, `podman
//! save --format oci-archive` writes it, `ctr -n k8s.io images import` puts it into the node's
//! containerd, where Pods with `imagePullPolicy: IfNotPresent`/`Never` find it. The sandbox
//! (pause) image is built here from busybox-static.

use std::ffi::OsString;
use std::path::Path;

use tokio::process::Command;

use crate::local::error::{LocalError, Result};
use crate::local::node::config::{CONTAINERD_NAMESPACE, PAUSE_IMAGE};
use crate::local::podman::{BUSYBOX, Podman};

/// Builds [`PAUSE_IMAGE`] in `podman`'s storage unless it is there: busybox-static alone, whose
/// `sleep` holds the Pod's namespaces.
pub async fn build_pause_image(podman: &Podman) -> Result<()> {
    if podman.image_exists(PAUSE_IMAGE).await? {
        return Ok(());
    }
    let work =
        tempfile::tempdir().map_err(|e| LocalError::io("creating a temporary directory", e))?;
    let rootfs = work.path().join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin)
        .map_err(|e| LocalError::io(format!("creating {}", bin.display()), e))?;
    std::fs::copy(BUSYBOX, bin.join("busybox")).map_err(|e| {
        LocalError::io(
            format!(
                "copying {BUSYBOX} (Debian package busybox-static; run scripts/install-deps.sh)"
            ),
            e,
        )
    })?;
    let tarball = work.path().join("rootfs.tar");
    run(
        "tar",
        vec![
            OsString::from("--numeric-owner"),
            "--owner=0".into(),
            "--group=0".into(),
            "-C".into(),
            rootfs.into_os_string(),
            "-cf".into(),
            tarball.clone().into_os_string(),
            ".".into(),
        ],
    )
    .await?;
    podman
        .exec([
            OsString::from("import"),
            "--quiet".into(),
            "--change".into(),
            r#"CMD ["/bin/busybox", "sleep", "2147483647"]"#.into(),
            tarball.into_os_string(),
            PAUSE_IMAGE.into(),
        ])
        .await?;
    tracing::info!(image = PAUSE_IMAGE, "built the pause image");
    Ok(())
}

/// Imports `image` from `podman`'s storage into the containerd at `socket` (namespace
/// `k8s.io`) under the same reference. Skips images containerd already holds with the same id.
pub async fn import(podman: &Podman, ctr: &Path, socket: &Path, image: &str) -> Result<()> {
    let id = podman
        .exec(["image", "inspect", "--format", "{{.Id}}", image])
        .await?
        .trim()
        .to_owned();
    let listed = ctr_cmd(ctr, socket, ["images", "ls"]).await?;
    if listed
        .lines()
        .any(|line| line.starts_with(&format!("{image} ")) && line.contains(&id))
    {
        return Ok(());
    }
    let work =
        tempfile::tempdir().map_err(|e| LocalError::io("creating a temporary directory", e))?;
    let archive = work.path().join("image.tar");
    podman
        .exec([
            OsString::from("save"),
            "--quiet".into(),
            "--format".into(),
            "oci-archive".into(),
            "-o".into(),
            archive.clone().into_os_string(),
            image.into(),
        ])
        .await?;
    let out = ctr_cmd(
        ctr,
        socket,
        [
            OsString::from("images"),
            "import".into(),
            "--no-unpack".into(),
            archive.into_os_string(),
        ],
    )
    .await?;
    // podman names the archive's image by its full reference; older podmans by the tag only.
    let imported = imported_name(&out);
    if let Some(name) = imported
        && name != image
    {
        ctr_cmd(
            ctr,
            socket,
            ["images", "tag", "--force", name.as_str(), image],
        )
        .await?;
    }
    tracing::info!(%image, imported = ?imported_name(&out), "image imported into the node's containerd");
    Ok(())
}

/// The reference `ctr images import` reports (`unpacking NAME (sha256:…)…done` or `NAME` lines).
fn imported_name(out: &str) -> Option<String> {
    out.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("unpacking ").unwrap_or(line);
        let name = line.split_whitespace().next()?;
        (!name.is_empty()).then(|| name.to_owned())
    })
}

/// `ctr --address SOCKET -n k8s.io ARGS`; stdout on success.
pub async fn ctr_cmd<I, S>(ctr: &Path, socket: &Path, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut full: Vec<OsString> = vec![
        "--address".into(),
        socket.as_os_str().to_owned(),
        "-n".into(),
        CONTAINERD_NAMESPACE.into(),
    ];
    full.extend(args.into_iter().map(Into::into));
    run(ctr, full).await
}

async fn run<P: AsRef<std::ffi::OsStr>>(program: P, args: Vec<OsString>) -> Result<String> {
    let program = program.as_ref().to_owned();
    let display = format!(
        "{} {}",
        program.to_string_lossy(),
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = Command::new(&program)
        .args(&args)
        .output()
        .await
        .map_err(|e| LocalError::io(format!("running `{display}`"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LocalError::Config(format!(
            "`{display}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_imported_reference() {
        assert_eq!(
            imported_name("unpacking localhost/a:latest (sha256:12)...done\n").as_deref(),
            Some("localhost/a:latest")
        );
        assert_eq!(
            imported_name("localhost/a:latest\n").as_deref(),
            Some("localhost/a:latest")
        );
        assert_eq!(imported_name(""), None);
    }
}
