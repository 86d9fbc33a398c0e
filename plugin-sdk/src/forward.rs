//! Forwarding the plugin's own `tracing` events to the supervisor as `log` notifications.
//!
//! Events inside a task carry its `taskId` (the SDK runs each task in a span with a
//! `task_id` field). Events below the handshake's `logLevel` are not sent.

use std::fmt;
use std::sync::OnceLock;

use loom_protocol::LogLevel;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;

use crate::context::Outbox;

static OUTBOX: OnceLock<Outbox> = OnceLock::new();

pub(crate) fn connect(outbox: Outbox) {
    let _ = OUTBOX.set(outbox);
}

/// A `tracing` layer that sends events to the supervisor. `serve` installs it as the
/// global subscriber unless one is set already; add it to your own subscriber with
/// `registry().with(loom_plugin_sdk::ForwardLayer)`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ForwardLayer;

struct TaskId(String);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for ForwardLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut v = FieldsVisitor::default();
        attrs.record(&mut v);
        if let (Some(Value::String(task_id)), Some(span)) = (v.fields.remove("task_id"), ctx.span(id)) {
            span.extensions_mut().insert(TaskId(task_id));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let Some(outbox) = OUTBOX.get() else { return };
        let level = level_of(*event.metadata().level());
        if !outbox.enabled(level) {
            return;
        }
        let mut v = FieldsVisitor::default();
        event.record(&mut v);
        let task_id = v.fields.remove("task_id").and_then(|t| t.as_str().map(str::to_owned)).or_else(|| {
            ctx.event_scope(event)?.find_map(|span| span.extensions().get::<TaskId>().map(|t| t.0.clone()))
        });
        let fields = (!v.fields.is_empty()).then_some(v.fields);
        outbox.log(level, v.message, task_id, fields);
    }
}

fn level_of(level: Level) -> LogLevel {
    match level {
        Level::TRACE => LogLevel::Trace,
        Level::DEBUG => LogLevel::Debug,
        Level::INFO => LogLevel::Info,
        Level::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

#[derive(Default)]
struct FieldsVisitor {
    message: String,
    fields: Map<String, Value>,
}

impl Visit for FieldsVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().to_owned(), Value::String(text));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.insert(field.name().to_owned(), Value::String(value.to_owned()));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_owned(), value.into());
    }
}
