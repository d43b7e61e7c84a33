//! The `berth` command line: the clap types and the dispatch of each subcommand to the
//! library that runs it (`berth`, `berth::tools`, `client::commands`). It holds no
//! behaviour of its own.

use berth::config::{Config, FileChecks};
use clap::{CommandFactory, Parser, Subcommand};
use std::path::PathBuf;

/// `0.1.0 (commit 1a2b3c4d5e6f)`: the package version and the git commit it was built
/// from (`build.rs`; `unknown` when built outside a git checkout without
/// `BERTH_GIT_COMMIT`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BERTH_GIT_COMMIT"),
    ")"
);

/// berth: a private OCI container registry and pull-through cache in one binary.
#[derive(Parser)]
#[command(name = "berth", version = VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    ///
    /// Without --config, berth runs its embedded default configuration: a filesystem
    /// store in ./berth-data and a listener on 127.0.0.1:5000.
    Serve {
        /// Path of the TOML configuration file (see docs/config.md).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the embedded default configuration, a starting point for your own file.
    DefaultConfig {
        /// Print the container image's variant instead: listening on 0.0.0.0:5000 and
        /// storing in /var/lib/berth (what the image has at /etc/berth/berth.toml).
        #[arg(long)]
        container: bool,
    },
    /// Probe a running berth: exit 0 when GET /v2/ answers 200 or 401, 1 otherwise.
    ///
    /// Asks the main listener of the configuration ([server] listen, on loopback when it
    /// listens on every address; https when TLS is configured, the certificate unchecked),
    /// or --url. For container health checks and Kubernetes exec probes: needs no shell.
    Health {
        /// Path of the TOML configuration file (default: the embedded one).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Probe this URL instead (e.g. http://10.0.0.5:5000/v2/); its certificate is
        /// checked.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// How long to wait for the answer.
        #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print a shell completion script for SHELL to stdout.
    ///
    /// e.g. `berth completions bash > /etc/bash_completion.d/berth`,
    /// `berth completions zsh > "${fpath[1]}/_berth"`,
    /// `berth completions fish > ~/.config/fish/completions/berth.fish`.
    Completions {
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print berth's manual page (roff) to stdout: `berth man > /usr/local/share/man/man1/berth.1`.
    Man,
    /// Check a configuration file and exit: 0 when valid, 1 with the reason when not.
    CheckConfig {
        /// Path of the TOML configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Collect garbage: delete manifests, links and blobs no tag needs any more.
    ///
    /// Safe while `berth serve` runs on the same store: nothing modified or needed within
    /// the grace period ([gc] grace) is deleted. Prints counts and bytes.
    Gc {
        /// Path of the TOML configuration file (default: the embedded one).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show which tags the [[retention.rule]] tables drop; drop them with --apply.
    ///
    /// Only tags are deleted; their content goes at the next garbage collection.
    Retention {
        /// Path of the TOML configuration file (default: the embedded one).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Drop the tags (without it, only the plan is printed).
        #[arg(long)]
        apply: bool,
    },
    /// Check every tag, manifest, index child, config, layer and referrer.
    ///
    /// Exit status 0 only when nothing is broken (or everything broken was repaired).
    Fsck {
        /// Path of the TOML configuration file (default: the embedded one).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Re-hash every blob (reads all stored bytes).
        #[arg(long)]
        deep: bool,
        /// Re-fetch broken cached content from its upstream, restore lost links, and
        /// move corrupt bytes to quarantine/ (hosted content is never deleted).
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that an image in any OCI registry pulls: index, every child manifest,
    /// config and layer (and referrers with --referrers).
    ///
    /// HEAD requests by default (sizes must match); --deep downloads every blob and checks
    /// its digest. Exit status 0 only when every node is fetchable and consistent;
    /// otherwise each failing node is reported with its parent and the reason.
    Verify {
        /// The image: [registry/]repository[:tag|@digest] (docker.io when no registry).
        #[arg(value_name = "REF")]
        image: String,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Download every blob and check its digest and size.
        #[arg(long)]
        deep: bool,
        /// Also walk each manifest's referrers (signatures, SBOMs, attestations).
        #[arg(long)]
        referrers: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy an image between registries and OCI layout directories, byte for byte.
    ///
    /// SRC and DST are [registry/]repository[:tag|@digest] or oci:DIR[:TAG]. Manifests
    /// are written exactly as read, so digests never change; blobs the destination has
    /// are skipped (a rerun resumes), same-registry copies mount, and blobs move several
    /// at a time. An index copies one platform's image unless --all.
    Copy {
        /// What to copy.
        #[arg(value_name = "SRC")]
        src: String,
        /// Where to.
        #[arg(value_name = "DST")]
        dst: String,
        #[command(flatten)]
        images: ImagesArgs,
        #[command(flatten)]
        both: BothRegistries,
    },
    /// Mirror a whole registry into another: every repository and tag, byte for byte.
    ///
    /// SRC and DST are registries as `berth copy` names them, without a repository
    /// (host[:port]; docker.io is Docker Hub). The repositories are SRC's catalog
    /// (/v2/_catalog, page by page) or the names in --list; each tag they have is copied
    /// as `berth copy --all` copies it: the whole index with every platform, manifests
    /// exactly as read (digests never change), blobs the destination has skipped, and a
    /// blob already sent to another repository of DST mounted there. A tag whose digest
    /// at DST already equals SRC's (one HEAD each) is left alone, so a rerun copies
    /// nothing and an interrupted mirror resumes. Every copied or up-to-date tag is then
    /// verified at DST (HEAD walk, as `berth verify`). Nothing is ever deleted at DST.
    ///
    /// Prints one line per tag (copied, up to date, FAILED with the reason) and a
    /// summary with the bytes copied, or the same as JSON. Exit status 0 only when every
    /// tag copied (or was up to date) and verified.
    Mirror {
        /// The registry to read: host[:port].
        #[arg(value_name = "SRC")]
        src: String,
        /// The registry to write: host[:port].
        #[arg(value_name = "DST")]
        dst: String,
        /// Only repositories matching PATTERN (`*` within a path component, `**` across:
        /// 'team/**'); give it again for more; default: every repository.
        #[arg(long = "repositories", value_name = "PATTERN")]
        repositories: Vec<String>,
        /// Only tags matching REGEX, anywhere in the tag unless anchored ('^v1\.');
        /// default: every tag.
        #[arg(long, value_name = "REGEX")]
        tags: Option<String>,
        /// Read the repository names from FILE (one a line, # comments) instead of SRC's
        /// catalog: for registries whose catalog is closed, such as Docker Hub.
        #[arg(long, value_name = "FILE")]
        list: Option<PathBuf>,
        /// From each index, take only this platform's image (os/arch[/variant]) and tag
        /// it at DST; default: the whole index with every platform.
        #[arg(long, value_name = "OS/ARCH")]
        platform: Option<String>,
        /// Tags copied at once (each moving several blobs at a time).
        #[arg(long, value_name = "N", default_value_t = 4,
              value_parser = clap::value_parser!(u16).range(1..))]
        jobs: u16,
        /// Show what would be copied (and what is up to date); write nothing to DST.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        both: BothRegistries,
    },
    /// Write an image to an OCI image-layout tarball (break-glass copy).
    ///
    /// The file is readable by `skopeo copy oci-archive:FILE ...` and by `berth import`;
    /// it is written under a temporary name and renamed when complete.
    Export {
        /// The image: [registry/]repository[:tag|@digest].
        #[arg(value_name = "REF")]
        image: String,
        /// The tarball to write.
        #[arg(short = 'o', long = "output", value_name = "FILE.tar")]
        output: PathBuf,
        #[command(flatten)]
        images: ImagesArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Push an image tarball to a registry: an OCI image-layout tar (as `berth export`
    /// or `skopeo copy ... oci-archive:` write) or a `docker save` archive.
    Import {
        /// The tarball.
        #[arg(value_name = "FILE.tar")]
        input: PathBuf,
        /// Where to push it: [registry/]repository[:tag]. The tag also picks the image
        /// in an archive that holds several.
        #[arg(value_name = "REF")]
        image: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Run every [[upstream.prefetch]] rule once: bring the images they name into the
    /// cache (all their platforms unless the rule lists some), as `berth serve` does on
    /// each rule's interval.
    ///
    /// Tags already cached are revalidated with a HEAD once their tag_ttl has passed;
    /// new and moved tags are fetched. With --dry-run nothing is fetched: each matched
    /// tag is shown as cached or to be fetched. Exit status 0 only when every tag came in.
    Prefetch {
        /// Path of the TOML configuration file (default: the embedded one).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Show what would be fetched; fetch nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write containerd hosts.toml files so nodes pull every upstream through berth.
    ///
    /// Writes OUT/<upstream>/hosts.toml for each [[upstream]]: berth as a mirror with the
    /// pull and resolve capabilities, the upstream's own URL as fallback. Point containerd's
    /// `config_path` (or `ctr --hosts-dir`) at OUT.
    HostsToml {
        /// Path of the TOML configuration file (default: the embedded one).
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// Directory to write into (e.g. /etc/containerd/certs.d).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// berth's URL as the nodes reach it (default: from [server] listen and TLS).
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// CA certificate (PEM) the nodes should trust for the endpoint.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
}

/// How `copy` and `mirror` reach their two registries.
#[derive(clap::Args, Debug)]
struct BothRegistries {
    /// Talk plain HTTP to both registries.
    #[arg(long)]
    plain_http: bool,
    /// Credentials for the source registry.
    #[arg(long, value_name = "USER:PASS")]
    src_creds: Option<String>,
    /// Credentials for the destination registry.
    #[arg(long, value_name = "USER:PASS")]
    dest_creds: Option<String>,
}

/// Which images of an index a copy or export takes.
#[derive(clap::Args, Debug)]
struct ImagesArgs {
    /// Take an index with every child image (the index keeps its digest).
    #[arg(long)]
    all: bool,
    /// From an index, take the image of this platform (os/arch[/variant]); default: this
    /// machine's.
    #[arg(long, value_name = "OS/ARCH", conflicts_with = "all")]
    platform: Option<String>,
}

impl From<ImagesArgs> for client::copy::CopyOptions {
    fn from(a: ImagesArgs) -> Self {
        client::copy::CopyOptions {
            all: a.all,
            platform: a.platform,
        }
    }
}

/// How a client command reaches a registry.
#[derive(clap::Args, Debug)]
struct RemoteArgs {
    /// Talk plain HTTP to the registry instead of HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// Credentials as USER:PASS (Basic, or for the registry's token server).
    #[arg(long, value_name = "USER:PASS")]
    creds: Option<String>,
    /// A file whose first line is USER:PASS (keeps the password out of `ps`).
    #[arg(long, value_name = "FILE")]
    creds_file: Option<PathBuf>,
}

impl From<RemoteArgs> for client::remote::Connect {
    fn from(a: RemoteArgs) -> Self {
        client::remote::Connect {
            plain_http: a.plain_http,
            creds: a.creds,
            creds_file: a.creds_file,
        }
    }
}

/// `--timeout 3s`: a duration as the configuration file writes them.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    berth::config::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("berth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Run a command; `Ok(false)` means "ran, but the answer is no" (exit status 1).
fn run(cli: Cli) -> anyhow::Result<bool> {
    use berth::tools::tool_config;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::DefaultConfig { container } => {
            if container {
                print!("{}", berth::config::container_default());
            } else {
                print!("{}", berth::config::DEFAULT_TOML);
            }
            Ok(true)
        }
        Command::Health {
            config,
            url,
            timeout,
        } => {
            let server = Config::load_server(config.as_deref())?;
            let opts = berth::health::HealthOptions { url, timeout };
            let h = runtime()?.block_on(berth::health::check(&server, &opts))?;
            let verdict = if h.healthy { "healthy" } else { "unhealthy" };
            println!("{verdict}: GET {}: {}", h.url, h.detail);
            Ok(h.healthy)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut out);
            Ok(true)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut out)?;
            Ok(true)
        }
        Command::CheckConfig { config } => {
            Config::load(Some(&config))?;
            println!("{}: ok", config.display());
            Ok(true)
        }
        Command::Serve { config } => {
            let config_path = config;
            let config = Config::load(config_path.as_deref())?;
            berth::init_logging(config.log.format);
            runtime()?.block_on(async {
                // Caught from here on: a stop while the store opens still drains.
                let shutdown = berth::shutdown_signal()?;
                berth::run_server(&config, config_path.as_deref(), shutdown).await
            })?;
            Ok(true)
        }
        Command::Gc { config, dry_run } => {
            let config = tool_config(config.as_deref())?;
            runtime()?.block_on(berth::tools::gc(&config, dry_run, &mut out))?;
            Ok(true)
        }
        Command::Retention { config, apply } => {
            let config = tool_config(config.as_deref())?;
            runtime()?.block_on(berth::tools::retention(&config, apply, &mut out))?;
            Ok(true)
        }
        Command::Fsck {
            config,
            deep,
            repair,
            json,
        } => {
            let config = tool_config(config.as_deref())?;
            let args = berth::tools::FsckArgs { deep, repair, json };
            runtime()?.block_on(berth::tools::fsck(&config, args, &mut out))
        }
        Command::Verify {
            image,
            remote,
            deep,
            referrers,
            json,
        } => {
            tool_config(None)?;
            let args = client::commands::VerifyArgs {
                image,
                connect: remote.into(),
                opts: client::verify::VerifyOptions { deep, referrers },
                json,
            };
            runtime()?.block_on(client::commands::verify(args, &mut out))
        }
        Command::Copy {
            src,
            dst,
            images,
            both:
                BothRegistries {
                    plain_http,
                    src_creds,
                    dest_creds,
                },
        } => {
            tool_config(None)?;
            let args = client::commands::CopyArgs {
                src,
                dst,
                images: images.into(),
                plain_http,
                src_creds,
                dest_creds,
            };
            runtime()?.block_on(client::commands::copy(args, &mut out))?;
            Ok(true)
        }
        Command::Mirror {
            src,
            dst,
            repositories,
            tags,
            list,
            platform,
            jobs,
            dry_run,
            json,
            both:
                BothRegistries {
                    plain_http,
                    src_creds,
                    dest_creds,
                },
        } => {
            tool_config(None)?;
            let args = client::commands::MirrorArgs {
                src,
                dst,
                repositories,
                tags,
                list,
                platform,
                jobs: jobs.into(),
                dry_run,
                json,
                plain_http,
                src_creds,
                dest_creds,
            };
            runtime()?.block_on(client::commands::mirror(args, &mut out))
        }
        Command::Export {
            image,
            output,
            images,
            remote,
        } => {
            tool_config(None)?;
            let args = client::commands::ExportArgs {
                image,
                output,
                images: images.into(),
                connect: remote.into(),
            };
            runtime()?.block_on(client::commands::export(args, &mut out))?;
            Ok(true)
        }
        Command::Import {
            input,
            image,
            remote,
        } => {
            tool_config(None)?;
            let args = client::commands::ImportArgs {
                input,
                image,
                connect: remote.into(),
            };
            runtime()?.block_on(client::commands::import(args, &mut out))?;
            Ok(true)
        }
        Command::Prefetch { config, dry_run } => {
            let config = tool_config(config.as_deref())?;
            runtime()?.block_on(berth::tools::prefetch(&config, dry_run, &mut out))
        }
        Command::HostsToml {
            config,
            out: dir,
            endpoint,
            ca,
        } => {
            let config = berth::tools::tool_config_with(config.as_deref(), FileChecks::Skip)?;
            let opts = berth::hosts::HostsOptions {
                out: dir,
                endpoint,
                ca,
            };
            for f in berth::hosts::write_hosts(&config, &opts)? {
                use std::io::Write;
                writeln!(out, "{}", f.display())?;
            }
            Ok(true)
        }
    }
}
