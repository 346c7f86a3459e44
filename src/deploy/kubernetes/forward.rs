//! A port-forward to a Service, opened through kube's client as `kubectl port-forward svc/…`
//! does: the Service's selector picks a ready pod, its `targetPort` (a number, or a container
//! port's name) the port, and every connection accepted on a loopback listener gets its own
//! forwarded stream (one WebSocket through the API server each). Used by `bench --target
//! kubernetes` to reach the gateway from outside the cluster.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::Client;

use super::{classify, KubeError};

/// An open port-forward; closed (listener and every stream) when dropped.
pub struct PortForward {
    /// Where to connect on this machine.
    pub local: SocketAddr,
    /// The pod the streams go to, and its port.
    pub pod: String,
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards a loopback port to a ready pod behind `service` in `namespace`. Fails, before
/// listening, when the Service is missing, no pod behind it is ready, or RBAC refuses
/// `create pods/portforward` (one stream is opened and closed to find out).
pub async fn forward_service(
    client: Client,
    url: &str,
    namespace: &str,
    service: &str,
) -> Result<PortForward, KubeError> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let svc = services
        .get_opt(service)
        .await
        .map_err(|e| classify(e, "get", "services", namespace, service, url))?
        .ok_or_else(|| KubeError::NoService {
            service: service.into(),
            namespace: namespace.into(),
        })?;
    let spec = svc.spec.unwrap_or_default();
    let selector = spec
        .selector
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let target = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .next()
        .map(|p| p.target_port.unwrap_or(IntOrString::Int(p.port)));
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| classify(e, "list", "pods", namespace, "pods", url))?;
    let no_pod = || KubeError::NoReadyPod {
        service: service.into(),
        namespace: namespace.into(),
        selector: selector.clone(),
    };
    let pod = list.items.into_iter().find(is_ready).ok_or_else(no_pod)?;
    let name = pod.metadata.name.clone().ok_or_else(no_pod)?;
    let port = match target {
        Some(IntOrString::Int(p)) => u16::try_from(p).ok(),
        Some(IntOrString::String(port_name)) => named_port(&pod, &port_name),
        None => None,
    }
    .ok_or_else(|| KubeError::NoServicePort {
        service: service.into(),
        namespace: namespace.into(),
    })?;
    // One stream first: a refusal (RBAC, a kubelet that cannot forward) shows here, as an
    // error, and not as a run whose every connection fails.
    let mut probe = pods
        .portforward(&name, &[port])
        .await
        .map_err(|e| classify(e, "create", "pods/portforward", namespace, &name, url))?;
    drop(probe.take_stream(port));
    probe.abort();
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|source| KubeError::Listen { source })?;
    let local = listener
        .local_addr()
        .map_err(|source| KubeError::Listen { source })?;
    let pod_name = name.clone();
    let task = tokio::spawn(async move {
        loop {
            let (mut socket, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "port-forward: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let (pods, pod_name) = (pods.clone(), pod_name.clone());
            tokio::spawn(async move {
                let mut forwarder = match pods.portforward(&pod_name, &[port]).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(pod = %pod_name, error = %e, "port-forward: the API server refused a stream");
                        return;
                    }
                };
                let Some(mut upstream) = forwarder.take_stream(port) else {
                    return;
                };
                if let Err(e) = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await {
                    tracing::debug!(pod = %pod_name, error = %e, "port-forward: stream ended");
                }
                drop(upstream);
                forwarder.abort();
            });
        }
    });
    Ok(PortForward {
        local,
        pod: name,
        port,
        task,
    })
}

/// Running, and its Ready condition true.
fn is_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && pod.metadata.deletion_timestamp.is_none()
        && status
            .conditions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The number of the container port called `name`.
fn named_port(pod: &Pod, name: &str) -> Option<u16> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.as_deref().unwrap_or_default())
        .find(|p| p.name.as_deref() == Some(name))
        .and_then(|p| u16::try_from(p.container_port).ok())
}
