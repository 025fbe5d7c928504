//! `/metrics`, read through a Prometheus text-format parser we did not write.

use std::collections::BTreeSet;

use super::get;

/// A parsed scrape of `/metrics` on `port`.
pub struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    pub async fn of(port: u16, headers: &[&str]) -> Scrape {
        let (status, body) = get(port, "/metrics", headers).await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        let lines = body.lines().map(|l| Ok(l.to_string()));
        Scrape(prometheus_parse::Scrape::parse(lines).expect("the exposition parses"))
    }

    /// The value of the sample `name` whose labels include `labels`; panics when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let sample = self
            .0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
        match &sample.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => Some(*v),
            prometheus_parse::Value::Untyped(v) => Some(*v),
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count),
            prometheus_parse::Value::Summary(_) => None,
        }
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.0.samples.iter().map(|s| s.metric.clone()).collect()
    }
}
