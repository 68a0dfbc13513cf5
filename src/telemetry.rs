//! Logging, tracing and metrics.
//!
//! - Logs: text or JSON lines on stderr, filtered by `log.filter`; every line inside an RPC
//!   carries its `trace_id` and `request_id` (fields of the RPC span). Span fields meant for the
//!   exporter only (`otel.*`) are not formatted, and a field recorded on an open span is
//!   appended to its JSON text, never re-parsed ([`SpanFields`]): at `info` with nothing logged
//!   a call's span costs a few small string writes.
//! - Traces: OpenTelemetry over OTLP/gRPC, configured by the standard `OTEL_*` variables, and
//!   off (no layer at all) unless `OTEL_EXPORTER_OTLP_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. h2/hyper/tower internals never become spans.
//!   The per-operation spans (`mastercard.http`, `redis.script`) are `debug` spans: the
//!   exporter takes them whatever `log.filter` says, and without an exporter (and `log.filter`
//!   at `info`) no layer wants them, so they are never built.
//! - Metrics: a Prometheus recorder (see [`metrics`](crate::metrics)).

use crate::config::{LogFormat, LogSettings};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter, Targets};
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;
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
            .fmt_fields(SpanFields)
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
                // Our own debug spans (one per Mastercard attempt, per Redis operation) are
                // exported whatever the log filter says.
                let ours = tracing_subscriber::filter::filter_fn(|meta| {
                    meta.is_span()
                        && meta.target().starts_with("c2p_enroll")
                        && *meta.level() != tracing::Level::TRACE
                });
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(targets.or(ours));
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

/// Whether a span field is for the exporter only (`otel.name`, `otel.kind`: the exporter reads
/// them; a log line has the span's name).
fn exporter_only(field: &Field) -> bool {
    field.name().starts_with("otel.")
}

/// The JSON log format's span fields: a JSON object, as the JSON formatter expects, without the
/// exporter-only fields; a field recorded later is appended to the object's text (a repeated
/// key reads as its last value) instead of tracing-subscriber's parse and re-serialise.
pub struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut out = String::from("{");
        fields.record(&mut JsonAppender::new(&mut out, true));
        out.push('}');
        writer.write_str(&out)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        if !current.fields.ends_with('}') {
            current.fields.clear();
            current.fields.push('{');
        } else {
            current.fields.pop();
        }
        let empty = current.fields.ends_with('{');
        fields.record(&mut JsonAppender::new(&mut current.fields, empty));
        current.fields.push('}');
        Ok(())
    }
}

/// Writes `"name":value` pairs, comma-separated, into a JSON object's text.
struct JsonAppender<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> JsonAppender<'a> {
    fn new(out: &'a mut String, first: bool) -> Self {
        Self { out, first }
    }

    fn key(&mut self, field: &Field) -> bool {
        if exporter_only(field) {
            return false;
        }
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        json_string(self.out, field.name());
        self.out.push(':');
        true
    }
}

impl Visit for JsonAppender<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            json_string(self.out, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            let _ = write!(self.out, "{value}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                let _ = write!(self.out, "{value}");
            } else {
                json_string(self.out, &value.to_string());
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if self.key(field) {
            json_string(self.out, &format!("{value:?}"));
        }
    }
}

/// `value` as a JSON string literal.
fn json_string(out: &mut String, value: &str) {
    out.push('"');
    // Ids, names and numbers as text need no escape: copied whole.
    if !value.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(value);
        out.push('"');
        return;
    }
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn span_fields_are_json_appended_without_exporter_only_fields() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .fmt_fields(SpanFields)
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "rpc",
                otel.name = "svc/Method",
                request_id = "id \"quoted\"\n",
                card = tracing::field::Empty,
                outcome = tracing::field::Empty,
                ok = tracing::field::Empty,
            );
            span.record("card", 70001);
            span.record("outcome", "ok");
            span.record("outcome", "error");
            span.record("ok", true);
            span.in_scope(|| {
                let empty = tracing::info_span!("empty", later = tracing::field::Empty);
                empty.record("later", -1i64);
                empty.in_scope(|| tracing::info!(x = 1, "inside"));
            });
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let spans = line["spans"].as_array().unwrap();
        assert_eq!(spans[0]["request_id"], "id \"quoted\"\n", "{text}");
        assert_eq!(spans[0]["card"], 70001);
        assert_eq!(spans[0]["outcome"], "error", "the last value recorded");
        assert_eq!(spans[0]["ok"], true);
        assert!(spans[0].get("otel.name").is_none(), "{text}");
        assert_eq!(spans[1]["later"], -1);
        assert_eq!(line["x"], 1);
    }
}
