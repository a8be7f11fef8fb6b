//! The deployment files, checked offline. Every manifest in
//! `deploy/kubernetes/` must pass the Kubernetes JSON schemas in strict mode
//! (kubernetes-validate from PyPI, which ships them; scripts/test.sh
//! installs it). Then what no schema sees: the manifests fit together
//! (every Secret, ConfigMap, key, volume, label and port referred to
//! exists), every pod is hardened and has resource bounds, patd serves TLS
//! from a Secret and its probes are HTTPS `httpGet` probes, which a real
//! patd with TLS on answers when asked the way the kubelet asks them (the
//! kubelet's gRPC probe has no TLS), `deploy/redis.conf` and its ConfigMap
//! copy agree
//! and start a real redis-server the way the StatefulSet runs it, the
//! templates keep patd from starting until they are filled in and then pass
//! patd's own settings, and the Containerfile agrees with the manifests and
//! with `.dockerignore`.
//!
//! Nothing here is skipped: without python3 and kubernetes-validate (or
//! redis-server) the tests fail and say to run scripts/test.sh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::DigitallySignedStruct;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The validator scripts/test.sh installs, and the Kubernetes versions the
/// manifests must be valid for: the oldest supported here and the newest
/// the validator knows.
const VALIDATOR: &str = "kubernetes-validate";
const VALIDATOR_VERSION: &str = "1.37.0";
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

const INSTALL_HINT: &str = "run scripts/test.sh, which installs what this test needs";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The YAML files of deploy/kubernetes/, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    files
}

/// Runs python3, failing the test with the install hint if it cannot start.
fn python(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {INSTALL_HINT}"))
}

/// The installed validator is the pinned one; anything else fails the test.
fn require_validator() {
    let out = python(&[
        "-c",
        "import importlib.metadata as m, kubernetes_validate; print(m.version('kubernetes-validate'))",
    ]);
    assert!(
        out.status.success(),
        "{VALIDATOR} is not installed ({}): {INSTALL_HINT}",
        String::from_utf8_lossy(&out.stderr)
            .trim()
            .lines()
            .last()
            .unwrap_or("")
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        version, VALIDATOR_VERSION,
        "{VALIDATOR} {version} is installed, the suite pins {VALIDATOR_VERSION}: {INSTALL_HINT}"
    );
}

/// The documents of a YAML file as JSON, parsed by PyYAML (which
/// kubernetes-validate depends on; YAML 1.1, as Kubernetes reads it).
fn documents(path: &Path) -> Vec<Value> {
    require_validator();
    let out = python(&[
        "-c",
        "import json, sys, yaml\n\
         docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
         print(json.dumps(docs))",
        path.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{} is not YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("python printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// Every Kubernetes object in deploy/kubernetes/, by (kind, name).
struct Objects(BTreeMap<(String, String), Value>);

impl Objects {
    fn load() -> Self {
        let mut objects = BTreeMap::new();
        for file in manifest_files() {
            for doc in documents(&file) {
                let kind = text(&doc["kind"]).to_owned();
                let name = text(&doc["metadata"]["name"]).to_owned();
                let key = (kind.clone(), name.clone());
                assert!(
                    objects.insert(key, doc).is_none(),
                    "{kind} {name} is defined twice"
                );
            }
        }
        Self(objects)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.0
            .get(&(kind.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes/"))
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.0
            .iter()
            .filter(move |((k, _), _)| k == kind)
            .map(|((_, name), v)| (name.as_str(), v))
    }

    /// The workloads (Deployments, StatefulSets) with their pod specs.
    fn workloads(&self) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for kind in ["Deployment", "StatefulSet", "DaemonSet"] {
            for (name, w) in self.of_kind(kind) {
                out.push((format!("{kind} {name}"), w));
            }
        }
        out
    }

    /// The value of `key` in a Secret (stringData or base64 data) or ConfigMap.
    fn key(&self, kind: &str, name: &str, key: &str) -> String {
        let object = self.get(kind, name);
        if let Some(v) = object["stringData"].get(key) {
            return text(v).to_owned();
        }
        if let Some(v) = object["data"].get(key) {
            if kind == "Secret" {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text(v))
                    .unwrap_or_else(|_| panic!("Secret {name} key {key} is not base64"));
                return String::from_utf8(bytes).expect("utf-8 secret");
            }
            return text(v).to_owned();
        }
        panic!("{kind} {name} has no key {key}")
    }
}

fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Whether `selector` (a matchLabels map) selects pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(selector) = selector.as_object() else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn manifests_pass_the_kubernetes_schemas() {
    require_validator();
    let files = manifest_files();
    let documents: usize = files.iter().map(|f| documents(f).len()).sum();
    for version in KUBERNETES_VERSIONS {
        let mut args = vec![
            "-m".to_owned(),
            "kubernetes_validate".to_owned(),
            "--strict".to_owned(),
            "--kubernetes-version".to_owned(),
            version.to_owned(),
        ];
        args.extend(files.iter().map(|f| f.display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = python(&args);
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A kind without a schema is only a warning to the validator; here
        // it is a failure, like any error.
        let bad: Vec<&str> = report.lines().filter(|l| !l.starts_with("INFO")).collect();
        assert!(
            out.status.success() && bad.is_empty(),
            "deploy/kubernetes/ against the Kubernetes {version} schemas (strict):\n{report}"
        );
        let passed = report.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(
            passed, documents,
            "every object must be validated, Kubernetes {version}:\n{report}"
        );
    }
}

#[test]
fn manifests_fit_together_and_every_pod_is_hardened_and_bounded() {
    let objects = Objects::load();
    let workloads = objects.workloads();
    assert!(!workloads.is_empty(), "no workloads");

    for (what, workload) in &workloads {
        let spec = &workload["spec"];
        let pod = &spec["template"]["spec"];
        let labels = &spec["template"]["metadata"]["labels"];
        assert!(
            selects(&spec["selector"]["matchLabels"], labels),
            "{what}: its selector must select its own pods"
        );

        // Hardening: no API token, no PATD_* Service variables, non-root
        // with the runtime's seccomp profile.
        assert_eq!(pod["automountServiceAccountToken"], false, "{what}");
        assert_eq!(pod["enableServiceLinks"], false, "{what}");
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{what}: runAsNonRoot");
        assert!(
            psc["runAsUser"].as_u64().is_some_and(|u| u > 0),
            "{what}: runAsUser must be a non-zero uid"
        );
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{what}");

        let volumes: BTreeMap<&str, &Value> = list(&pod["volumes"])
            .iter()
            .map(|v| (text(&v["name"]), v))
            .collect();
        let claims: BTreeSet<&str> = list(&spec["volumeClaimTemplates"])
            .iter()
            .map(|c| text(&c["metadata"]["name"]))
            .collect();
        for (name, volume) in &volumes {
            if let Some(cm) = volume.get("configMap") {
                for item in list(&cm["items"]) {
                    objects.key("ConfigMap", text(&cm["name"]), text(&item["key"]));
                }
                objects.get("ConfigMap", text(&cm["name"]));
            } else if let Some(secret) = volume.get("secret") {
                for item in list(&secret["items"]) {
                    objects.key("Secret", text(&secret["secretName"]), text(&item["key"]));
                }
                objects.get("Secret", text(&secret["secretName"]));
            } else {
                panic!("{what}: volume {name} is neither a ConfigMap nor a Secret");
            }
        }

        let containers = list(&pod["containers"]);
        assert!(!containers.is_empty(), "{what}: no containers");
        for c in containers {
            let cname = format!("{what} container {}", text(&c["name"]));
            let csc = &c["securityContext"];
            assert_eq!(csc["allowPrivilegeEscalation"], false, "{cname}");
            assert_eq!(csc["readOnlyRootFilesystem"], true, "{cname}");
            assert!(
                list(&csc["capabilities"]["drop"]).contains(&Value::from("ALL")),
                "{cname}: must drop ALL capabilities"
            );
            let resources = &c["resources"];
            for r in ["cpu", "memory"] {
                assert!(
                    resources["requests"].get(r).is_some(),
                    "{cname}: no {r} request"
                );
            }
            assert!(
                resources["limits"].get("memory").is_some(),
                "{cname}: no memory limit"
            );
            assert!(
                c.get("livenessProbe").is_some(),
                "{cname}: no livenessProbe"
            );
            assert!(
                c.get("readinessProbe").is_some(),
                "{cname}: no readinessProbe"
            );
            for env in list(&c["env"]) {
                let from = &env["valueFrom"];
                if let Some(r) = from.get("secretKeyRef") {
                    objects.key("Secret", text(&r["name"]), text(&r["key"]));
                }
                if let Some(r) = from.get("configMapKeyRef") {
                    objects.key("ConfigMap", text(&r["name"]), text(&r["key"]));
                }
            }
            for m in list(&c["volumeMounts"]) {
                let name = text(&m["name"]);
                assert!(
                    volumes.contains_key(name) || claims.contains(name),
                    "{cname}: mounts {name}, which is neither a volume nor a claim"
                );
            }
        }

        // Every Service in front of these pods reaches a named container port.
        let port_names: BTreeSet<&str> = containers
            .iter()
            .flat_map(|c| list(&c["ports"]))
            .map(|p| text(&p["name"]))
            .collect();
        for (service, s) in objects.of_kind("Service") {
            if selects(&s["spec"]["selector"], labels) {
                for port in list(&s["spec"]["ports"]) {
                    let target = text(&port["targetPort"]);
                    assert!(
                        port_names.contains(target),
                        "Service {service}: targetPort {target} is no port of {what}"
                    );
                }
            }
        }
    }

    // No object selects nothing.
    let pod_labels: Vec<&Value> = workloads
        .iter()
        .map(|(_, w)| &w["spec"]["template"]["metadata"]["labels"])
        .collect();
    for kind in ["Service", "PodDisruptionBudget", "NetworkPolicy"] {
        for (name, o) in objects.of_kind(kind) {
            let selector = match kind {
                "Service" => &o["spec"]["selector"],
                "PodDisruptionBudget" => &o["spec"]["selector"]["matchLabels"],
                _ => &o["spec"]["podSelector"]["matchLabels"],
            };
            assert!(
                pod_labels.iter().any(|l| selects(selector, l)),
                "{kind} {name} selects no pods of deploy/kubernetes/"
            );
        }
    }
}

/// patd's container in the Deployment.
fn patd_container(objects: &Objects) -> &Value {
    let pod = &objects.get("Deployment", "patd")["spec"]["template"]["spec"];
    list(&pod["containers"])
        .iter()
        .find(|c| c["name"] == "patd")
        .expect("a container named patd")
}

fn container_port(container: &Value, name: &str) -> u64 {
    list(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// patd's environment in the Deployment: literal values, and Secret or
/// ConfigMap keys as the templates have them.
fn patd_env(objects: &Objects) -> Vec<(String, String)> {
    list(&patd_container(objects)["env"])
        .iter()
        .map(|e| {
            let name = text(&e["name"]).to_owned();
            let value = if let Some(v) = e.get("value") {
                text(v).to_owned()
            } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                objects.key("Secret", text(&r["name"]), text(&r["key"]))
            } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
                objects.key("ConfigMap", text(&r["name"]), text(&r["key"]))
            } else {
                panic!("env {name}: neither a value nor a Secret or ConfigMap key")
            };
            (name, value)
        })
        .collect()
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> &'a str {
    env.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("the Deployment sets no {name}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has no port"))
}

/// An HTTP probe of patd's container as the kubelet reads it: the port
/// resolved to a number (a name is a container port's), the scheme
/// defaulted to HTTP.
#[derive(Debug)]
struct HttpProbe {
    path: String,
    port: u64,
    scheme: String,
}

fn http_probe(container: &Value, which: &str) -> HttpProbe {
    let probe = &container[which];
    let get = probe.get("httpGet").unwrap_or_else(|| {
        panic!(
            "{which}: an httpGet probe (the kubelet's gRPC probe has no TLS, so it \
             fails for ever against patd with TLS on): {probe}"
        )
    });
    assert!(
        get.get("host").is_none(),
        "{which}: no host, so the kubelet probes the pod IP: {get}"
    );
    let port = match &get["port"] {
        Value::String(name) => container_port(container, name),
        number => number
            .as_u64()
            .unwrap_or_else(|| panic!("{which}: port {number}")),
    };
    HttpProbe {
        path: text(&get["path"]).to_owned(),
        port,
        scheme: get.get("scheme").map_or("HTTP", text).to_owned(),
    }
}

#[test]
fn patd_serves_tls_is_probed_over_https_kept_available_and_fenced_in() {
    let objects = Objects::load();
    let deployment = objects.get("Deployment", "patd");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let c = patd_container(&objects);
    let grpc = container_port(c, "grpc");
    let http = container_port(c, "http");

    // The listeners are the container's ports.
    let env = patd_env(&objects);
    assert_eq!(port_of(env_value(&env, "PATD_GRPC_ADDR")), grpc);
    assert_eq!(port_of(env_value(&env, "PATD_HTTP_ADDR")), http);

    // TLS from the Secret patd-tls (keys as cert-manager writes them),
    // mounted read-only as a whole directory: a subPath mount would never
    // see a renewed Secret, and patd reloads the files by itself.
    let pod = &deployment["spec"]["template"]["spec"];
    for (var, key) in [("PATD_TLS_CERT", "tls.crt"), ("PATD_TLS_KEY", "tls.key")] {
        let path = PathBuf::from(env_value(&env, var));
        let mount = list(&c["volumeMounts"])
            .iter()
            .find(|m| Path::new(text(&m["mountPath"])) == path.parent().unwrap())
            .unwrap_or_else(|| panic!("{var}'s directory is a volume mount"));
        assert_eq!(mount["readOnly"], true, "{var}: a read-only mount");
        assert!(mount.get("subPath").is_none(), "{var}: no subPath mount");
        let volume = list(&pod["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let secret = &volume["secret"];
        assert_eq!(secret["secretName"], "patd-tls", "{var}: from patd-tls");
        let file = path.file_name().unwrap().to_str().unwrap();
        let item = list(&secret["items"])
            .iter()
            .find(|i| i["path"] == file)
            .unwrap_or_else(|| panic!("the tls volume has no item at {file}"));
        assert_eq!(item["key"], key, "{var}: the Secret's key {key}");
        objects.key("Secret", "patd-tls", key);
    }
    assert_eq!(
        objects.get("Secret", "patd-tls")["type"],
        "kubernetes.io/tls"
    );

    // HTTPS probes on the HTTP listener: liveness asks for the whole
    // process, readiness for the token service (503 while Redis is
    // unreachable); the_probes_work_against_patd_with_tls_on performs them.
    for (which, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let probe = http_probe(c, which);
        assert_eq!(probe.path, path, "{which}");
        assert_eq!(probe.port, http, "{which}: on the http port");
        assert_eq!(probe.scheme, "HTTPS", "{which}: patd serves TLS only");
    }

    // With TLS no Service port claims cleartext HTTP/2.
    let service = objects.get("Service", "patd");
    for port in list(&service["spec"]["ports"]) {
        assert_ne!(
            port["appProtocol"], "kubernetes.io/h2c",
            "Service patd: {port} is TLS, not cleartext HTTP/2"
        );
    }

    // The callers file is where the ConfigMap volume puts it.
    let callers = PathBuf::from(env_value(&env, "PATD_CALLERS_FILE"));
    let mount = list(&c["volumeMounts"])
        .iter()
        .find(|m| Path::new(text(&m["mountPath"])) == callers.parent().unwrap())
        .expect("PATD_CALLERS_FILE's directory is a volume mount");
    let volume = list(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let file = callers.file_name().unwrap().to_str().unwrap();
    let item = list(&volume["configMap"]["items"])
        .iter()
        .find(|i| i["path"] == file)
        .unwrap_or_else(|| panic!("the callers volume has no item at {file}"));
    objects.key(
        "ConfigMap",
        text(&volume["configMap"]["name"]),
        text(&item["key"]),
    );

    // Two replicas, at least one kept through voluntary disruptions.
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas >= 2, "patd runs at least two replicas");
    let pdb = objects.get("PodDisruptionBudget", "patd");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));
    let min = pdb["spec"]["minAvailable"].as_u64().unwrap();
    assert!(
        (1..replicas).contains(&min),
        "minAvailable {min} must keep one replica and still allow a drain"
    );

    // Ingress only from selected clients, to exactly patd's ports.
    let policy = objects.get("NetworkPolicy", "patd");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        labels
    ));
    let types = list(&policy["spec"]["policyTypes"]);
    assert!(types.contains(&Value::from("Ingress")) && types.contains(&Value::from("Egress")));
    for rule in list(&policy["spec"]["ingress"]) {
        assert!(
            !list(&rule["from"]).is_empty(),
            "an ingress rule without `from` admits everyone"
        );
        let ports: BTreeSet<u64> = list(&rule["ports"])
            .iter()
            .map(|p| p["port"].as_u64().unwrap())
            .collect();
        assert_eq!(ports, BTreeSet::from([grpc, http]));
    }
}

/// What the kubelet's HTTPS probe verifies of patd's certificate: nothing.
/// Only the handshake's signatures are checked (as Go's
/// `InsecureSkipVerify` does).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How long one probe may take here (generous: the suite shares the CPU).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// One GET the way the kubelet's prober sends it (User-Agent, Accept, no
/// keep-alive), over HTTP/2 or HTTP/1.1: the status and body, or why there
/// was none.
async fn kubelet_get<S>(
    stream: S,
    h2: bool,
    authority: &str,
    path: &str,
) -> Result<(u16, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt as _, Empty};
    use hyper::body::Bytes;
    use hyper::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let io = TokioIo::new(stream);
    let request = hyper::Request::get(if h2 {
        format!("https://{authority}{path}")
    } else {
        path.to_owned()
    })
    .header(USER_AGENT, "kube-probe/1.37")
    .header(ACCEPT, "*/*");
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        sender.send_request(request).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = request
            .header(HOST, authority)
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Performs `probe` against `addr` as the kubelet does: TLS for HTTPS
/// without verifying the certificate, no client certificate, no SNI (the
/// kubelet dials the pod IP), offering ALPN `alpn`.
async fn perform(
    probe: &HttpProbe,
    addr: std::net::SocketAddr,
    alpn: &[&str],
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let authority = addr.to_string();
    match probe.scheme.as_str() {
        "HTTP" => kubelet_get(tcp, false, &authority, &probe.path).await,
        "HTTPS" => {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            kubelet_get(tls, h2, &authority, &probe.path).await
        }
        other => panic!("scheme {other}: the kubelet knows HTTP and HTTPS"),
    }
}

/// A patd process, killed and reaped on drop.
struct Running {
    process: Child,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real patd with TLS on loopback (a certificate from a CA made here,
/// for the Service's name, not for the address the probes dial), the
/// memory store and a callers file, as the Deployment has one. Returns it
/// with its gRPC and HTTP addresses.
async fn patd_with_tls() -> (Running, std::net::SocketAddr, std::net::SocketAddr) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    let dir = temp_dir("probes");
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["patd.patd.svc".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), server_key.serialize_pem()).unwrap();
    let (_key, entry) = patd::auth::new_caller_key("gateway", &[patd::auth::Role::Introspect]);
    std::fs::write(dir.join("callers.toml"), entry).unwrap();
    let ready = dir.join("ready.json");
    let log = std::fs::File::create(dir.join("patd.log")).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_patd"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PATD_TLS_CERT", dir.join("tls.crt"))
        .env("PATD_TLS_KEY", dir.join("tls.key"))
        .env("PATD_CALLERS_FILE", dir.join("callers.toml"))
        .env("PATD_GRPC_ADDR", "127.0.0.1:0")
        .env("PATD_HTTP_ADDR", "127.0.0.1:0")
        .env("PATD_STORE", "memory")
        .env("PATD_READY_FILE", &ready)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start patd");
    let mut running = Running {
        process: child,
        dir: dir.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let addrs: Value = loop {
        if let Ok(body) = std::fs::read_to_string(&ready) {
            break serde_json::from_str(&body).expect("the ready file is JSON");
        }
        if let Some(status) = running.process.try_wait().unwrap() {
            panic!(
                "patd exited ({status}):\n{}",
                std::fs::read_to_string(dir.join("patd.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "patd wrote no ready file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let addr = |key: &str| text(&addrs[key]).parse().expect("an address");
    let (grpc, http) = (addr("grpc_addr"), addr("http_addr"));
    (running, grpc, http)
}

#[tokio::test]
async fn the_probes_work_against_patd_with_tls_on() {
    let objects = Objects::load();
    let c = patd_container(&objects);
    let env = patd_env(&objects);
    let (_patd, grpc_addr, http_addr) = patd_with_tls().await;

    // The manifest's HTTP listener port is this patd's HTTP port; the
    // probes must go there (the only listener with /healthz and /readyz).
    let http_port = port_of(env_value(&env, "PATD_HTTP_ADDR"));
    for which in ["livenessProbe", "readinessProbe"] {
        let probe = http_probe(c, which);
        assert_eq!(
            probe.port, http_port,
            "{which}: port {} is not patd's HTTP listener (PATD_HTTP_ADDR)",
            probe.port
        );
        // As the kubelet offers ALPN (h2 first), and HTTP/1.1 only (a
        // kubelet with DISABLE_HTTP2).
        for alpn in [&["h2", "http/1.1"][..], &["http/1.1"]] {
            let answer = tokio::time::timeout(PROBE_TIMEOUT, perform(&probe, http_addr, alpn))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()));
            assert!(
                matches!(answer, Ok((200, _))),
                "{which} {probe:?} (ALPN {alpn:?}) against patd with TLS: {answer:?}"
            );
        }

        // Without TLS the same request gets no answer: TLS is really on.
        let plain = HttpProbe {
            scheme: "HTTP".to_owned(),
            ..probe
        };
        let answer = tokio::time::timeout(PROBE_TIMEOUT, perform(&plain, http_addr, &[]))
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()));
        assert!(
            answer.is_err(),
            "{which} over plain HTTP got an answer from patd with TLS: {answer:?}"
        );
    }

    // And the kubelet's native gRPC probe (plaintext HTTP/2), which the
    // manifest used to ship, fails against it.
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|e| e.to_string())
    };
    let answer = tokio::time::timeout(PROBE_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err("timed out".to_owned()));
    assert!(
        answer.is_err(),
        "a plaintext gRPC health check answered by patd with TLS: {answer:?}"
    );
}

/// The Redis URL of the Secret template: (host, port).
fn store_host_port(url: &str) -> (String, u64) {
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = host_port.rsplit_once(':').expect("host:port");
    (host.to_owned(), port.parse().unwrap())
}

fn redis_pod(objects: &Objects) -> (&Value, &Value) {
    let set = objects.get("StatefulSet", "patd-redis");
    let pod = &set["spec"]["template"]["spec"];
    let c = list(&pod["containers"])
        .iter()
        .find(|c| c["name"] == "redis")
        .expect("a container named redis");
    (set, c)
}

/// The value of `directive` in a redis.conf (the last one wins).
fn directive<'a>(conf: &'a str, name: &str) -> Option<&'a str> {
    conf.lines()
        .filter_map(|l| l.trim().split_once(char::is_whitespace))
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .next_back()
}

#[test]
fn only_patd_reaches_redis_which_keeps_its_aof_on_the_volume() {
    let objects = Objects::load();
    let (set, c) = redis_pod(&objects);
    assert_eq!(set["spec"]["replicas"], 1, "one Redis writer");
    let redis_labels = &set["spec"]["template"]["metadata"]["labels"];
    let patd_labels = &objects.get("Deployment", "patd")["spec"]["template"]["metadata"]["labels"];
    let port = container_port(c, "redis");

    // patd's PATD_STORE names the Redis Service.
    let env = patd_env(&objects);
    let (host, url_port) = store_host_port(env_value(&env, "PATD_STORE"));
    let service = objects.get("Service", &host);
    assert!(selects(&service["spec"]["selector"], redis_labels));
    assert!(
        list(&service["spec"]["ports"])
            .iter()
            .any(|p| p["port"].as_u64() == Some(url_port)),
        "Service {host} has no port {url_port}"
    );

    // Ingress from patd only, on Redis's port; no egress at all.
    let policy = objects.get("NetworkPolicy", "patd-redis");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        redis_labels
    ));
    let ingress = list(&policy["spec"]["ingress"]);
    assert_eq!(ingress.len(), 1);
    let from = list(&ingress[0]["from"]);
    assert_eq!(from.len(), 1, "one peer: patd's pods");
    assert!(from[0].get("namespaceSelector").is_none());
    assert_eq!(&from[0]["podSelector"]["matchLabels"], patd_labels);
    assert_eq!(list(&ingress[0]["ports"]).len(), 1);
    assert_eq!(ingress[0]["ports"][0]["port"].as_u64(), Some(port));
    assert!(list(&policy["spec"]["policyTypes"]).contains(&Value::from("Egress")));
    assert!(list(&policy["spec"]["egress"]).is_empty());

    // ... and patd's own egress lets it reach Redis there.
    let patd_policy = objects.get("NetworkPolicy", "patd");
    assert!(
        list(&patd_policy["spec"]["egress"]).iter().any(|rule| {
            list(&rule["to"])
                .iter()
                .any(|to| selects(&to["podSelector"]["matchLabels"], redis_labels))
                && list(&rule["ports"])
                    .iter()
                    .any(|p| p["port"].as_u64() == Some(port))
        }),
        "NetworkPolicy patd must let patd reach Redis on {port}"
    );

    // The AOF lives on the claim's volume: redis.conf's `dir` is its mount.
    let conf = read(&root().join("deploy/redis.conf"));
    let dir = directive(&conf, "dir").expect("deploy/redis.conf sets dir");
    let claim = text(&set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]);
    assert!(
        list(&c["volumeMounts"])
            .iter()
            .any(|m| m["name"] == claim && m["mountPath"] == dir),
        "the volume {claim} must be mounted at redis.conf's dir {dir}"
    );
}

/// Every `REPLACE_WITH_...` placeholder in `text`.
fn placeholders(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("REPLACE_WITH_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // `REPLACE_WITH_...` in a comment is no placeholder.
        if end > "REPLACE_WITH_".len() {
            found.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    found
}

/// `text` with each placeholder of `fills` replaced by its value.
fn filled(text: &str, fills: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (placeholder, value) in fills {
        out = out.replace(placeholder, value);
    }
    out
}

/// Values for the placeholders that patd and Redis read, of the kind the
/// README makes them: a hex password, a base64 32-byte key, the digests
/// `patd caller-key` prints.
fn fills() -> BTreeMap<String, String> {
    use base64::Engine as _;
    let mut fills = BTreeMap::new();
    fills.insert(
        "REPLACE_WITH_REDIS_PASSWORD".to_owned(),
        hex::encode(*b"0123456789abcdef0123456789abcdef"),
    );
    fills.insert(
        "REPLACE_WITH_BASE64_32_BYTE_KEY".to_owned(),
        base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
    );
    // A certificate and key for the TLS Secret.
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["patd.patd.svc".to_owned()]).unwrap();
    fills.insert("REPLACE_WITH_PEM_CERTIFICATE_CHAIN".to_owned(), cert.pem());
    fills.insert(
        "REPLACE_WITH_PEM_PRIVATE_KEY".to_owned(),
        signing_key.serialize_pem(),
    );
    for caller in ["GATEWAY", "CONSOLE"] {
        let (_key, entry) = patd::auth::new_caller_key("x", &[patd::auth::Role::Introspect]);
        let digest = entry
            .lines()
            .find_map(|l| l.strip_prefix("key_sha256 = \""))
            .and_then(|l| l.strip_suffix('"'))
            .expect("caller-key prints key_sha256");
        fills.insert(
            format!("REPLACE_WITH_{caller}_KEY_SHA256"),
            digest.to_owned(),
        );
    }
    fills
}

/// The files patd's container mounts, as (mount path, file name, contents
/// as the templates have them): the items of its ConfigMap and Secret
/// volumes (every key where a volume lists no items).
fn patd_files(objects: &Objects) -> Vec<(String, String, String)> {
    let pod = &objects.get("Deployment", "patd")["spec"]["template"]["spec"];
    let mut files = Vec::new();
    for m in list(&patd_container(objects)["volumeMounts"]) {
        let volume = list(&pod["volumes"])
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume for the mount {m}"));
        let (kind, source) = match volume.get("configMap") {
            Some(cm) => ("ConfigMap", cm),
            None => ("Secret", &volume["secret"]),
        };
        let name = text(source.get("name").unwrap_or(&source["secretName"]));
        let items: Vec<(String, String)> = match source.get("items") {
            Some(items) => list(items)
                .iter()
                .map(|i| (text(&i["key"]).to_owned(), text(&i["path"]).to_owned()))
                .collect(),
            None => {
                let object = objects.get(kind, name);
                ["data", "stringData"]
                    .iter()
                    .filter_map(|field| object[*field].as_object())
                    .flat_map(|map| map.keys())
                    .map(|k| (k.clone(), k.clone()))
                    .collect()
            }
        };
        for (key, path) in items {
            let contents = objects.key(kind, name, &key);
            files.push((text(&m["mountPath"]).to_owned(), path, contents));
        }
    }
    files
}

/// patd's settings from the Deployment's environment (as flags: every
/// `PATD_X_Y` is `--x-y`), with the files it mounts (callers, TLS) written
/// under `dir` and the paths pointing there.
fn patd_settings(
    objects: &Objects,
    dir: &Path,
    fill: &BTreeMap<String, String>,
) -> Result<patd::settings::Settings, String> {
    let env = patd_env(objects);
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for (mount, file, contents) in patd_files(objects) {
        let local = dir.join(mount.trim_start_matches('/'));
        std::fs::create_dir_all(&local).unwrap();
        std::fs::write(local.join(file), filled(&contents, fill)).unwrap();
        mounts.push((mount, local));
    }
    let mut args = vec!["patd".to_owned()];
    for (name, value) in &env {
        let Some(flag) = name.strip_prefix("PATD_") else {
            continue;
        };
        let value = filled(value, fill);
        let value = mounts
            .iter()
            .find_map(|(mount, local)| {
                value
                    .strip_prefix(&format!("{mount}/"))
                    .map(|rest| local.join(rest).display().to_string())
            })
            .unwrap_or(value);
        args.push(format!(
            "--{}={value}",
            flag.to_lowercase().replace('_', "-")
        ));
    }
    let config = patd::config::Config::try_parse_from(&args).map_err(|e| e.to_string())?;
    patd::settings::Settings::try_from(config).map_err(|e| e.to_string())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("patd-deploy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn templates_keep_patd_down_until_filled_then_pass_its_settings() {
    let objects = Objects::load();

    // Every placeholder is obvious and the README says how to fill it.
    let readme = read(&root().join("README.md"));
    let mut all = BTreeSet::new();
    for file in manifest_files() {
        all.extend(placeholders(&read(&file)));
    }
    assert!(
        !all.is_empty(),
        "the templates have REPLACE_WITH_ placeholders"
    );
    for p in &all {
        assert!(readme.contains(p.as_str()), "README.md never mentions {p}");
    }

    let dir = temp_dir("settings");
    // Unfilled, patd refuses to start.
    let refused = patd_settings(&objects, &dir, &BTreeMap::new())
        .expect_err("patd must refuse the unfilled templates");
    assert!(!refused.is_empty());

    // Filled in, patd's own settings accept them: callers on, keyed
    // digests, the Redis store, listening beyond loopback, over TLS.
    let fills = fills();
    let settings = patd_settings(&objects, &dir, &fills).unwrap_or_else(|e| {
        panic!("patd refuses the Deployment's settings with the templates filled in: {e}")
    });
    assert!(settings.callers.is_enabled());
    assert!(settings.rules.hasher.is_keyed());
    assert!(matches!(
        settings.store,
        patd::settings::StoreSettings::Redis { .. }
    ));
    assert!(!settings.grpc_addr.ip().is_loopback());
    assert!(settings.tls.is_some(), "patd serves TLS");
    let _ = std::fs::remove_dir_all(&dir);

    // Nothing patd reads is left with a placeholder the fills do not cover.
    let env = patd_env(&objects);
    let files = patd_files(&objects);
    for value in env
        .iter()
        .map(|(_, v)| v)
        .chain(files.iter().map(|(_, _, contents)| contents))
    {
        let left = placeholders(&filled(value, &fills));
        assert!(left.is_empty(), "no fill for {left:?}: extend fills()");
    }
}

/// Kills and reaps the child on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_cli(socket: &Path, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("-s").arg(socket).args(args);
    if let Some(p) = password {
        cmd.env("REDISCLI_AUTH", p);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): {INSTALL_HINT}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn redis_conf_is_the_configmap_copy_and_runs_as_the_statefulset_runs_it() {
    let objects = Objects::load();
    let conf = read(&root().join("deploy/redis.conf"));
    assert_eq!(
        objects.key("ConfigMap", "patd-redis-conf", "redis.conf"),
        conf,
        "the ConfigMap patd-redis-conf (redis.yaml) must be a copy of deploy/redis.conf"
    );
    for (name, value) in [
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("maxmemory-policy", "noeviction"),
    ] {
        assert_eq!(directive(&conf, name), Some(value), "redis.conf: {name}");
    }
    assert!(
        directive(&conf, "requirepass").is_none(),
        "no password in redis.conf"
    );

    // The container's command line against a real redis-server: each file
    // the pod mounts from a ConfigMap or Secret is written under a scratch
    // root (templates filled), the volume's path is the scratch `dir`, and
    // TCP is off (a unix socket instead).
    let (set, c) = redis_pod(&objects);
    let pod = &set["spec"]["template"]["spec"];
    let scratch = temp_dir("redis");
    let fills = fills();
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in list(&c["volumeMounts"]) {
        let mount = text(&m["mountPath"]).to_owned();
        let local = scratch.join(mount.trim_start_matches('/'));
        std::fs::create_dir_all(&local).unwrap();
        if let Some(v) = list(&pod["volumes"])
            .iter()
            .find(|v| v["name"] == m["name"])
        {
            let (kind, name, items) = if let Some(cm) = v.get("configMap") {
                ("ConfigMap", text(&cm["name"]), &cm["items"])
            } else {
                (
                    "Secret",
                    text(&v["secret"]["secretName"]),
                    &v["secret"]["items"],
                )
            };
            for item in list(items) {
                let value = objects.key(kind, name, text(&item["key"]));
                std::fs::write(local.join(text(&item["path"])), filled(&value, &fills)).unwrap();
            }
        }
        mounts.push((mount, local));
    }
    let args: Vec<String> = list(&c["args"])
        .iter()
        .map(|a| {
            let a = text(a);
            mounts
                .iter()
                .find_map(|(mount, local)| {
                    a.strip_prefix(mount.as_str())
                        .map(|rest| format!("{}{rest}", local.display()))
                })
                .unwrap_or_else(|| a.to_owned())
        })
        .collect();
    assert_eq!(args.first().map(String::as_str), Some("redis-server"));
    let data = mounts
        .iter()
        .find(|(mount, _)| Some(mount.as_str()) == directive(&conf, "dir"))
        .map(|(_, local)| local.clone())
        .expect("a volume at redis.conf's dir");
    let socket = scratch.join("redis.sock");
    let server = Command::new("redis-server")
        .args(&args[1..])
        .arg("--dir")
        .arg(&data)
        .args(["--port", "0", "--unixsocket"])
        .arg(&socket)
        .args(["--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-server ({e}): {INSTALL_HINT}"));
    let mut server = Reaped(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("redis-server with the StatefulSet's arguments exited: {status}");
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The password from the Secret is required, and is the one in patd's URL.
    assert!(redis_cli(&socket, None, &["ping"]).contains("NOAUTH"));
    let url = objects.key("Secret", "patd-redis", "url");
    let password = filled(&url, &fills)
        .strip_prefix("redis://:")
        .and_then(|r| r.split_once('@'))
        .map(|(p, _)| p.to_owned())
        .expect("redis://:PASSWORD@host");
    assert_eq!(redis_cli(&socket, Some(&password), &["ping"]), "PONG");
    for (name, value) in [
        ("appendfsync", "always"),
        ("maxmemory-policy", "noeviction"),
    ] {
        let got = redis_cli(&socket, Some(&password), &["config", "get", name]);
        assert!(got.ends_with(value), "{name}: {got}");
    }
    let maxmemory = redis_cli(&socket, Some(&password), &["config", "get", "maxmemory"]);
    assert!(
        !maxmemory.ends_with("\n0"),
        "maxmemory must be set: {maxmemory}"
    );
    assert!(
        data.join("appendonlydir").is_dir(),
        "the AOF is in the volume"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn the_image_agrees_with_the_manifests_and_its_build_context() {
    let objects = Objects::load();
    let containerfile = read(&root().join("deploy/Containerfile"));
    let lines: Vec<&str> = containerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();

    // Pinned base images: a version, never `latest` or a bare major.
    let froms: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(froms.len(), 2, "a build stage and a runtime stage");
    for image in &froms {
        let tag = image.rsplit_once(':').map_or("", |(_, t)| t);
        assert!(
            tag.chars().any(|c| c.is_ascii_digit()) && tag.contains(['.', '-']),
            "{image}: pin the base image by version"
        );
    }
    // The toolchain is at least the crate's rust-version.
    let cargo_toml = read(&root().join("Cargo.toml"));
    let msrv = cargo_toml
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap();
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    let toolchain = froms[0]
        .rsplit_once(":")
        .and_then(|(_, t)| t.split('-').next())
        .unwrap();
    assert!(
        version(toolchain) >= version(msrv),
        "rust {toolchain} < rust-version {msrv}"
    );

    // The image's user is the Deployment's, and not root.
    let user = lines
        .iter()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER");
    let psc = &objects.get("Deployment", "patd")["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(
        user,
        format!("{}:{}", psc["runAsUser"], psc["runAsGroup"]),
        "the image's USER is the Deployment's runAsUser:runAsGroup"
    );

    // EXPOSE names the container's ports.
    let c = patd_container(&objects);
    let exposed: BTreeSet<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse().unwrap()))
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from([container_port(c, "grpc"), container_port(c, "http")])
    );

    // .dockerignore admits only listed paths, and every COPY source is
    // among them (target/ and .git never reach the builder).
    let ignore = read(&root().join(".dockerignore"));
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        patterns.first(),
        Some(&"*"),
        ".dockerignore starts by ignoring everything"
    );
    let admitted: Vec<&str> = patterns[1..]
        .iter()
        .map(|p| p.strip_prefix('!').expect("only `!path` after `*`"))
        .collect();
    for p in &admitted {
        assert!(
            root().join(p).exists(),
            ".dockerignore admits {p}, which does not exist"
        );
        assert!(!p.contains("target") && !p.contains(".git"), "{p}");
    }
    for l in &lines {
        let Some(copy) = l.strip_prefix("COPY ") else {
            continue;
        };
        if copy.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = copy.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(
                admitted
                    .iter()
                    .any(|a| source == a || source.starts_with(&format!("{a}/"))),
                "COPY {source}: not admitted by .dockerignore"
            );
        }
    }
}
