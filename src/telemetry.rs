//! Logging, tracing and metrics.
//!
//! - Logs: text or JSON lines on stderr, filtered by `log.filter`; every line inside an RPC
//!   carries its `trace_id` and `request_id` (fields of the RPC span).
//! - Traces: OpenTelemetry over OTLP/gRPC, configured by the standard `OTEL_*` variables, and
//!   off (no layer at all) unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. h2/hyper/tower internals never become spans.
//! - Metrics: a Prometheus recorder (see [`metrics`](crate::metrics)).

use crate::config::{LogFormat, LogSettings};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// What must be flushed at exit.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing_enabled(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Exports the spans still buffered. Call once, at exit.
    pub fn shutdown(self) {
        if let Some(Err(e)) = self.tracer_provider.map(|p| p.shutdown()) {
            eprintln!("c2p-enroll: flushing traces failed: {e}");
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Installs the global subscriber (and the OTLP exporter when configured). Call once, at startup,
/// inside the Tokio runtime (the gRPC exporter needs it).
pub fn init(settings: &LogSettings) -> Telemetry {
    // The filter was validated with the settings; fall back to `info` rather than fail twice.
    let filter = EnvFilter::builder()
        .parse(&settings.filter)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
        // Colour codes only for a person at a terminal, never in collected logs.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };

    let exporting = !env_set("OTEL_SDK_DISABLED")
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    let (otel, tracer_provider) = if exporting {
        match tracer_provider() {
            Ok(provider) => {
                let tracer = provider.tracer("c2p-enroll");
                // Transport internals would add hundreds of spans per call.
                let targets = Targets::new()
                    .with_default(LevelFilter::INFO)
                    .with_target("h2", LevelFilter::OFF)
                    .with_target("hyper", LevelFilter::OFF)
                    .with_target("hyper_util", LevelFilter::OFF)
                    .with_target("tower", LevelFilter::OFF)
                    .with_target("tonic", LevelFilter::OFF)
                    .with_target("reqwest", LevelFilter::OFF)
                    .with_target("redis", LevelFilter::OFF);
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(targets);
                (Some(layer), Some(provider))
            }
            Err(e) => {
                eprintln!("c2p-enroll: traces not exported: {e}");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    // The exporter's layer is there only when traces are exported.
    let mut layers: Vec<
        Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>,
    > = vec![fmt.with_filter(filter).boxed()];
    if let Some(otel) = otel {
        layers.push(otel.boxed());
    }
    let result = tracing_subscriber::registry().with(layers).try_init();
    if let Err(e) = result {
        eprintln!("logging already initialised: {e}");
    }
    Telemetry { tracer_provider }
}

fn tracer_provider() -> Result<SdkTracerProvider, String> {
    // Endpoint, headers, timeout and TLS come from OTEL_EXPORTER_OTLP_* (read by the builder);
    // the sampler from OTEL_TRACES_SAMPLER(_ARG) (read by the SDK).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("c2p-enroll");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}
