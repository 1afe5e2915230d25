//! `persona serve`: the OpenAI-compatible server (persona-serve), until
//! SIGINT or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use persona_serve::{ServeOptions, Server};

use crate::args::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Vector files steered and monitored with by name (<name>.safetensors),
    /// e.g. checkpoints/vectors/smollm2-135m-instruct/.
    #[arg(long)]
    vectors: Option<PathBuf>,
    /// Run folders (or PEFT adapter folders); each is served as
    /// `<model>:<folder name>`, its adapters merged at startup.
    #[arg(long)]
    adapters: Option<PathBuf>,
    /// Answers decoded together per model (larger batches: more tokens/s in
    /// all, each answer slower).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Requests running or waiting at once; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    max_concurrent: usize,
    /// Longest prompt in tokens (default: the model's context less one).
    #[arg(long)]
    max_prompt_tokens: Option<usize>,
    /// Largest request body.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Every endpoint then needs `Authorization: Bearer <key>`.
    #[arg(long, env = "PERSONA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds in-flight requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
}

pub fn exec(a: Args) -> Result<()> {
    let opts = ServeOptions {
        model: a.model.model.clone(),
        device: persona_model::parse_device(&a.model.device)?,
        dtype: a.model.dtype.value,
        vectors: a.vectors,
        adapters: a.adapters,
        max_batch: a.max_batch,
        max_concurrent: a.max_concurrent,
        max_prompt_tokens: a.max_prompt_tokens,
        max_body_bytes: a.max_body_bytes,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        shutdown_grace: Duration::from_secs(a.shutdown_grace),
    };
    let server = Server::load(&opts, |m| eprintln!("persona serve: {m}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "persona serve: listening on http://{addr} (models: {})",
            server.model_ids().join(", ")
        );
        server.serve(listener, shutdown_signal()).await?;
        eprintln!("persona serve: stopped");
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
