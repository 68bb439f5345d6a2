//! The `vmbridge` binary: parse flags, load and validate the configuration, run.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use vmbridge::cli::Cli;
use vmbridge::config::FileConfig;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list_metrics {
        // With --metrics-profile / --metrics-groups: the families that selection exports.
        let all = vmbridge::model::metric::Selection::default();
        let selection = vmbridge::model::metric::Selection {
            profile: cli.metrics_profile.unwrap_or(all.profile),
            groups: cli.metrics_groups.clone().unwrap_or(all.groups),
        };
        print!("{}", vmbridge::catalogue::list_text(&selection));
        return ExitCode::SUCCESS;
    }
    let file = match &cli.config {
        Some(path) => match FileConfig::load(path) {
            Ok(f) => f,
            Err(e) => return fail(&e),
        },
        None => FileConfig::default(),
    };
    let settings = match cli.overlay(file).validate(&hostname()) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let Some(vmbridge::cli::Command::Check { output }) = cli.command {
        return check(settings, output);
    }
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init()
    } else {
        builder.init()
    }

    // Two malloc arenas serve vmbridge's few allocating threads (measured at 100 lab VMs:
    // 2.0 MB less RSS than with MALLOC_ARENA_MAX=16, CPU the same within noise; see
    // docs/benchmarks.md, "Polling path").
    vmbridge::source::libvirt::ffi::limit_malloc_arenas(2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Each VM holds at most one blocking thread even when stuck; this caps the total.
        .max_blocking_threads(512)
        .thread_name("vmbridge")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let code = runtime.block_on(async {
        let stop = CancellationToken::new();
        let signal_stop = stop.clone();
        tokio::spawn(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install the SIGTERM handler");
                    return;
                }
            };
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
            tracing::info!("shutting down");
            signal_stop.cancel();
        });
        match vmbridge::run(settings, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        }
    });
    // Dropping the runtime would wait for every blocking thread, and a libvirt call into a
    // SIGSTOPped QEMU never returns: give them a moment, then exit without them.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    code
}

/// `vmbridge check`: probes once, prints the report; 0 when something works, else 1.
fn check(settings: vmbridge::config::Settings, output: vmbridge::cli::CheckOutput) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let report = runtime.block_on(vmbridge::check::run(&settings));
    let text = match output {
        vmbridge::cli::CheckOutput::Table => vmbridge::check::table(&report),
        vmbridge::cli::CheckOutput::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => json + "\n",
            Err(e) => return fail(&e),
        },
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
    // A probe into a hung VM may still be running: do not wait for it.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    if report.any_working() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// How long blocking calls (libvirt RPCs, `/proc` reads) may take to finish at exit.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Prints an error and its chain once, and maps it to a failing exit code.
fn fail(e: &dyn std::error::Error) -> ExitCode {
    let mut msg = format!("vmbridge: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    eprintln!("{msg}");
    ExitCode::from(2)
}
