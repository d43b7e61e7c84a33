//! The client commands as `berth` runs them (`verify`, `copy`, `mirror`, `export`,
//! `import`): parse what the user typed, open both ends, draw progress on stderr and
//! write the report or one summary line to `out`. They reach registries and layout
//! files only; they never read berth's configuration or open its store.

use crate::copy::{CopyOptions, Endpoint};
use crate::mirror::{MirrorOptions, Remote, Repositories};
use crate::progress::TransferProgress;
use crate::remote::{Connect, ImageRef};
use crate::verify::VerifyOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// `berth verify REF`.
#[derive(Clone, Debug)]
pub struct VerifyArgs {
    /// The image as typed: `[registry/]repository[:tag|@digest]`.
    pub image: String,
    pub connect: Connect,
    pub opts: VerifyOptions,
    /// Write the report as JSON instead of lines for people.
    pub json: bool,
}

/// `berth verify`; `Ok(false)` when some node is missing or inconsistent.
pub async fn verify(args: VerifyArgs, out: &mut dyn Write) -> anyhow::Result<bool> {
    let image: ImageRef = args.image.parse()?;
    let client = args.connect.client(&image)?;
    let report = crate::verify::verify(&client, &image, args.opts).await;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", crate::verify::render(&report))?;
    }
    Ok(report.is_ok())
}

/// `berth copy SRC DST`.
#[derive(Clone, Debug)]
pub struct CopyArgs {
    /// `[registry/]repository[:tag|@digest]` or `oci:DIR[:TAG]`.
    pub src: String,
    /// The same forms as `src`.
    pub dst: String,
    pub images: CopyOptions,
    /// Talk plain HTTP to both registries.
    pub plain_http: bool,
    /// `USER:PASS` for the source registry.
    pub src_creds: Option<String>,
    /// `USER:PASS` for the destination registry.
    pub dest_creds: Option<String>,
}

/// `berth copy`.
pub async fn copy(args: CopyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let src: Endpoint = args.src.parse()?;
    let dst: Endpoint = args.dst.parse()?;
    let progress = Arc::new(TransferProgress::new());
    let report = crate::copy::copy_endpoints(
        &src,
        &dst,
        &connect(args.plain_http, args.src_creds.clone()),
        &connect(args.plain_http, args.dest_creds.clone()),
        &args.images,
        progress.clone(),
    )
    .await;
    progress.finish();
    let report = report?;
    writeln!(
        out,
        "{}: {} manifests; blobs: {} copied ({}), {} already there, {} mounted",
        report.digest,
        report.manifests,
        report.blobs_copied,
        crate::human_bytes(report.bytes_copied),
        report.blobs_existing,
        report.blobs_mounted
    )?;
    Ok(())
}

/// How `copy` and `mirror` reach one of their two registries.
fn connect(plain_http: bool, creds: Option<String>) -> Connect {
    Connect {
        plain_http,
        creds,
        creds_file: None,
    }
}

/// `berth mirror SRC DST`.
#[derive(Clone, Debug)]
pub struct MirrorArgs {
    /// The source registry, `host[:port]`.
    pub src: String,
    /// The destination registry, `host[:port]`.
    pub dst: String,
    /// `--repositories` patterns as typed; none means all.
    pub repositories: Vec<String>,
    /// The `--tags` regex as typed.
    pub tags: Option<String>,
    /// A file of repository names, read instead of the source's catalog.
    pub list: Option<PathBuf>,
    /// Only this platform's image of each index (default: every platform).
    pub platform: Option<String>,
    /// Tags copied at once.
    pub jobs: usize,
    /// Report what would be copied; write nothing.
    pub dry_run: bool,
    /// Write the report as JSON instead of lines for people.
    pub json: bool,
    /// Talk plain HTTP to both registries.
    pub plain_http: bool,
    /// `USER:PASS` for the source registry.
    pub src_creds: Option<String>,
    /// `USER:PASS` for the destination registry.
    pub dest_creds: Option<String>,
}

/// `berth mirror`; `Ok(false)` when some tag failed to copy or verify.
pub async fn mirror(args: MirrorArgs, out: &mut dyn Write) -> anyhow::Result<bool> {
    use crate::mirror::{parse_registry, read_list, tags_regex};
    let (src, dst) = (parse_registry(&args.src)?, parse_registry(&args.dst)?);
    let opts = MirrorOptions {
        repositories: match &args.list {
            Some(path) => Repositories::Named(read_list(path, &src)?),
            None => Repositories::Catalog,
        },
        patterns: args
            .repositories
            .iter()
            .map(|p| oci::RepoPattern::new(p))
            .collect::<Result<_, _>>()?,
        tags: args.tags.as_deref().map(tags_regex).transpose()?,
        platform: args.platform,
        jobs: args.jobs,
        dry_run: args.dry_run,
    };
    let remote = |name: String, creds| -> anyhow::Result<Remote> {
        let client = connect(args.plain_http, creds).registry_client(&name)?;
        Ok(Remote {
            name,
            client: Arc::new(client),
        })
    };
    let src = remote(src, args.src_creds.clone())?;
    let dst = remote(dst, args.dest_creds.clone())?;
    let progress = Arc::new(TransferProgress::new());
    let report = crate::mirror::mirror(&src, &dst, &opts, progress.clone()).await;
    progress.finish();
    let report = report?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", crate::mirror::render(&report))?;
    }
    Ok(report.is_ok())
}

/// `berth export REF -o FILE.tar`.
#[derive(Clone, Debug)]
pub struct ExportArgs {
    /// `[registry/]repository[:tag|@digest]`.
    pub image: String,
    /// The tarball to write.
    pub output: PathBuf,
    pub images: CopyOptions,
    pub connect: Connect,
}

/// `berth export`.
pub async fn export(args: ExportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let image: ImageRef = args.image.parse()?;
    let src = Endpoint::Registry(image.clone()).source(&args.connect)?;
    let tag = image.tag().map(|t| t.to_string());
    let progress = Arc::new(TransferProgress::new());
    let report = crate::archive::export(
        src.as_ref(),
        &image.target.to_string(),
        tag.as_deref(),
        &args.output,
        &args.images,
        progress.clone(),
    )
    .await;
    progress.finish();
    let report = report?;
    writeln!(
        out,
        "{}: {} ({} manifests, {} blobs, {})",
        args.output.display(),
        report.digest,
        report.manifests,
        report.blobs_copied,
        crate::human_bytes(report.bytes_copied)
    )?;
    Ok(())
}

/// `berth import FILE.tar REF`.
#[derive(Clone, Debug)]
pub struct ImportArgs {
    /// An OCI image-layout tar or a `docker save` archive.
    pub input: PathBuf,
    /// `[registry/]repository:tag`: where to push, and which image of the archive.
    pub image: String,
    pub connect: Connect,
}

/// `berth import`.
pub async fn import(args: ImportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let image: ImageRef = args.image.parse()?;
    let Some(tag) = image.tag().map(|t| t.to_string()) else {
        anyhow::bail!("import needs a tag to push to, not a digest")
    };
    let dst = Endpoint::Registry(image.clone()).sink(&args.connect)?;
    let progress = Arc::new(TransferProgress::new());
    let report =
        crate::archive::import(&args.input, dst.as_ref(), Some(&tag), progress.clone()).await;
    progress.finish();
    let report = report?;
    writeln!(
        out,
        "{image}: {} ({} manifests; blobs: {} pushed, {} already there)",
        report.digest, report.manifests, report.blobs_copied, report.blobs_existing
    )?;
    Ok(())
}
