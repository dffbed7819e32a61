//! The contract's permission templates as nats-server users: the admin (unrestricted, creates
//! buckets), the operator, and one user per device whose rights come from
//! [`device_permissions`] — so isolation between devices is the contract's, not ours.

use harmony::local::nats::{
    AllowResponses, NatsAuthConfig, NatsPermissions, NatsUser, SubjectPermission,
};
use harmony_fleet_contracts::{Permissions, device_permissions, operator_permissions};

use crate::credentials::FleetCredentials;

/// Users for every identity in `credentials`.
pub fn auth_config(credentials: &FleetCredentials) -> NatsAuthConfig {
    let mut users = vec![
        NatsUser {
            user: credentials.admin.user.clone(),
            password: credentials.admin.password.clone(),
            permissions: None,
        },
        NatsUser {
            user: credentials.operator.user.clone(),
            password: credentials.operator.password.clone(),
            permissions: Some(to_nats(&operator_permissions())),
        },
    ];
    users.extend(
        credentials
            .devices
            .iter()
            .map(|(device, password)| NatsUser {
                user: device.as_str().to_owned(),
                password: password.clone(),
                permissions: Some(to_nats(&device_permissions(device))),
            }),
    );
    NatsAuthConfig {
        users,
        ..NatsAuthConfig::default()
    }
}

fn to_nats(permissions: &Permissions) -> NatsPermissions {
    NatsPermissions {
        publish: Some(SubjectPermission {
            allow: permissions.publish.allow.clone(),
            deny: Vec::new(),
        }),
        subscribe: Some(SubjectPermission {
            allow: permissions.subscribe.allow.clone(),
            deny: Vec::new(),
        }),
        allow_responses: permissions
            .allow_responses
            .then_some(AllowResponses::Single),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmony_fleet_contracts::DeviceId;

    #[test]
    fn every_device_gets_exactly_its_template() {
        let devices: Vec<DeviceId> = ["dev-1", "dev-2"]
            .iter()
            .map(|s| s.parse().expect("id"))
            .collect();
        let credentials = FleetCredentials::generate(&devices);
        let auth = auth_config(&credentials);
        assert_eq!(auth.users.len(), 4);
        let dev1 = auth
            .users
            .iter()
            .find(|u| u.user == "dev-1")
            .expect("dev-1 user");
        let expected = device_permissions(&devices[0]);
        let publish = dev1
            .permissions
            .as_ref()
            .and_then(|p| p.publish.as_ref())
            .expect("publish rules");
        assert_eq!(publish.allow, expected.publish.allow);
        assert!(publish.allow.iter().all(|s| !s.contains("dev-2")));
        assert!(auth.users[0].permissions.is_none(), "admin is unrestricted");
    }
}
