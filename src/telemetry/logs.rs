//! One log record per state transition of an image key, to OTLP and to stderr.

use opentelemetry::logs::{AnyValue, LogRecord, Logger, Severity};
use opentelemetry::{Key, KeyValue};
use opentelemetry_sdk::logs::SdkLogger;

use crate::registry::{ProbeResult, State, Trigger};

pub struct TransitionLog {
    logger: SdkLogger,
}

impl TransitionLog {
    pub fn new(logger: SdkLogger) -> Self {
        Self { logger }
    }

    /// `previous` is `None` for a key's first probe; `trigger`, the failed pull that set the
    /// probe off, if one did.
    pub fn transition(
        &self,
        image: &str,
        attributes: &[KeyValue],
        previous: Option<State>,
        result: &ProbeResult,
        workloads: &[String],
        trigger: Option<&Trigger>,
    ) {
        let was = previous.map_or("pending", State::as_str);
        let message = format!("{image} is now {} (was {was})", result.state);
        let (severity, text) =
            if result.state == State::Available { (Severity::Info, "INFO") } else { (Severity::Warn, "WARN") };
        match result.state {
            State::Available => {
                tracing::info!(image, state = %result.state, previous = was, workloads = workloads.len(), "{message}")
            }
            _ => tracing::warn!(
                image, state = %result.state, previous = was, error = result.error.as_deref().unwrap_or_default(),
                workloads = workloads.len(), "{message}"
            ),
        }
        let mut record = self.logger.create_log_record();
        record.set_timestamp(std::time::SystemTime::now());
        record.set_severity_number(severity);
        record.set_severity_text(text);
        record.set_event_name("pullcheck.image.state_change");
        record.set_body(AnyValue::from(message));
        for kv in attributes {
            record.add_attribute(kv.key.clone(), any_value(&kv.value));
        }
        record.add_attribute(Key::new("pullcheck.image.state"), AnyValue::from(result.state.as_str()));
        record.add_attribute(Key::new("pullcheck.image.previous_state"), AnyValue::from(was));
        if let Some(error) = &result.error {
            record.add_attribute(Key::new("error.type"), AnyValue::from(result.state.as_str()));
            record.add_attribute(Key::new("error.message"), AnyValue::from(error.clone()));
        }
        if let Some(digest) = &result.digest {
            record.add_attribute(Key::new("oci.manifest.digest"), AnyValue::from(digest.clone()));
        }
        let users: Vec<AnyValue> = workloads.iter().map(|w| AnyValue::from(w.clone())).collect();
        record.add_attribute(Key::new("pullcheck.workloads"), AnyValue::ListAny(Box::new(users)));
        add_trigger(&mut record, trigger);
        self.logger.emit(record);
    }

    /// A container's pods started running (or stopped running) another digest than its tag
    /// resolves to now.
    pub fn drift(&self, image: &str, attributes: &[KeyValue], drifted: bool, current: &str, running: &[String]) {
        let message = if drifted {
            format!("{image} now resolves to {current}, but running pods run {}", running.join(", "))
        } else {
            format!("{image}: running pods run {current}, what the tag resolves to")
        };
        let severity = if drifted { Severity::Warn } else { Severity::Info };
        if drifted {
            tracing::warn!(image, "{message}");
        } else {
            tracing::info!(image, "{message}");
        }
        let mut record = self.logger.create_log_record();
        record.set_timestamp(std::time::SystemTime::now());
        record.set_severity_number(severity);
        record.set_severity_text(if drifted { "WARN" } else { "INFO" });
        record.set_event_name("pullcheck.image.drift_change");
        record.set_body(AnyValue::from(message));
        for kv in attributes {
            record.add_attribute(kv.key.clone(), any_value(&kv.value));
        }
        record.add_attribute(Key::new("pullcheck.image.drift"), AnyValue::from(drifted));
        record.add_attribute(Key::new("oci.manifest.digest"), AnyValue::from(current.to_string()));
        let running: Vec<AnyValue> = running.iter().map(|d| AnyValue::from(d.clone())).collect();
        record.add_attribute(Key::new("pullcheck.running_digests"), AnyValue::ListAny(Box::new(running)));
        self.logger.emit(record);
    }

    /// The probe of an image a failed-pull event named that no tracked workload uses (a Job's
    /// pod already gone): probed once, told once.
    pub fn triggered_probe(&self, image: &str, result: &ProbeResult, trigger: &Trigger) {
        let message = format!(
            "{image}, which pod {}/{} failed to pull ({}), is {}",
            trigger.namespace, trigger.pod, trigger.reason, result.state
        );
        tracing::warn!(image, state = %result.state, pod = %trigger.pod, namespace = %trigger.namespace, "{message}");
        let mut record = self.logger.create_log_record();
        record.set_timestamp(std::time::SystemTime::now());
        record.set_severity_number(Severity::Warn);
        record.set_severity_text("WARN");
        record.set_event_name("pullcheck.image.pull_failure_probe");
        record.set_body(AnyValue::from(message));
        record.add_attribute(Key::new("container.image.name"), AnyValue::from(image.to_string()));
        record.add_attribute(Key::new("pullcheck.image.state"), AnyValue::from(result.state.as_str()));
        if let Some(error) = &result.error {
            record.add_attribute(Key::new("error.message"), AnyValue::from(error.clone()));
        }
        add_trigger(&mut record, Some(trigger));
        self.logger.emit(record);
    }
}

/// The failed pull behind a probe, on its log record.
fn add_trigger(record: &mut opentelemetry_sdk::logs::SdkLogRecord, trigger: Option<&Trigger>) {
    let Some(trigger) = trigger else { return };
    record.add_attribute(Key::new("pullcheck.trigger.reason"), AnyValue::from(trigger.reason.clone()));
    record.add_attribute(Key::new("pullcheck.trigger.message"), AnyValue::from(trigger.message.clone()));
    record.add_attribute(Key::new("k8s.namespace.name"), AnyValue::from(trigger.namespace.clone()));
    record.add_attribute(Key::new("k8s.pod.name"), AnyValue::from(trigger.pod.clone()));
}

fn any_value(value: &opentelemetry::Value) -> AnyValue {
    use opentelemetry::{Array, Value};
    match value {
        Value::Bool(b) => AnyValue::from(*b),
        Value::I64(i) => AnyValue::from(*i),
        Value::F64(f) => AnyValue::from(*f),
        Value::String(s) => AnyValue::from(s.to_string()),
        Value::Array(Array::String(items)) => {
            AnyValue::ListAny(Box::new(items.iter().map(|s| AnyValue::from(s.to_string())).collect()))
        }
        other => AnyValue::from(other.to_string()),
    }
}
