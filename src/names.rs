//! Names that several modules must agree on: labels, field managers, object names, ports.
//! Render writes them, deploy selects on them, the gateway watches and patches by them;
//! none of those modules owns them, so they live here.

/// The port every function replica serves on inside its pod.
pub const FUNCTION_PORT: u16 = 8080;
/// The fixed non-root user every cubeflash pod runs as.
pub const RUN_AS_UID: u32 = 10001;
pub const GATEWAY_NAME: &str = "cubeflash-gateway";
/// The Secret holding the gateway's admin token (`token`) and its other keys.
pub const ADMIN_SECRET: &str = "cubeflash-admin";
/// The ConfigMap holding the gateway's route table, and its key.
pub const ROUTES_CONFIGMAP: &str = "cubeflash-routes";
pub const ROUTES_KEY: &str = "routes.json";
/// The field manager of `cubeflash deploy`'s server-side applies.
pub const DEPLOY_MANAGER: &str = "cubeflash";
/// The field manager of `cubeflash secret set --target kubernetes`.
pub const SECRET_MANAGER: &str = "cubeflash-secret";
/// The field manager of the gateway's scale patches.
pub const SCALE_MANAGER: &str = "cubeflash-gateway";

pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const FUNCTION: &str = "cubeflash.io/function";
    pub const MANAGER: &str = "cubeflash";
}
