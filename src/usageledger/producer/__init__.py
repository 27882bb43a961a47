"""The producer: the platform's event-writing rules (SPEC §3, P1–P5).

Each function changes the resource tables and writes its usage event in one transaction (see
`transaction.one_transaction` for how an Engine, a Connection, or a Connection already inside a
transaction is handled). Other parts of the project drive the platform only through these.
"""

from __future__ import annotations

from usageledger.event_columns import (
    MANAGED_SERVICE_INSTANCE,
    USER_PROVIDED_SERVICE_INSTANCE,
    managed_only,
    package_state_expression,
    service_instance_type_expression,
)
from usageledger.producer.context import (
    AppContext,
    ServiceInstanceContext,
    read_app_context,
    read_service_instance_context,
)
from usageledger.producer.package_state import package_state
from usageledger.producer.processes import (
    PREVIOUS_PACKAGE_STATE_UNKNOWN,
    ProcessState,
    create_process,
    destroy_process,
    scale_process,
    start_process,
    stop_process,
)
from usageledger.producer.resources import (
    create_app,
    create_droplet,
    create_organization,
    create_package,
    create_space,
)
from usageledger.producer.services import (
    create_service,
    create_service_broker,
    create_service_instance,
    create_service_plan,
    delete_service_instance,
    update_service_instance,
)
from usageledger.producer.staging import (
    STAGING_MEMORY_IN_MB,
    finish_staging,
    set_buildpack,
    start_staging,
)
from usageledger.producer.tasks import (
    NON_TERMINAL_TASK_STATES,
    TASK_PACKAGE_STATE,
    TERMINAL_TASK_STATES,
    TaskState,
    TaskStopEvidence,
    cancel_task,
    create_task,
    destroy_task,
    fail_task,
    run_task,
    succeed_task,
    task_stop_evidence,
)
from usageledger.producer.transaction import Bind, one_transaction

__all__ = [
    "MANAGED_SERVICE_INSTANCE",
    "NON_TERMINAL_TASK_STATES",
    "PREVIOUS_PACKAGE_STATE_UNKNOWN",
    "STAGING_MEMORY_IN_MB",
    "TASK_PACKAGE_STATE",
    "TERMINAL_TASK_STATES",
    "USER_PROVIDED_SERVICE_INSTANCE",
    "AppContext",
    "Bind",
    "ProcessState",
    "ServiceInstanceContext",
    "TaskState",
    "TaskStopEvidence",
    "cancel_task",
    "create_app",
    "create_droplet",
    "create_organization",
    "create_package",
    "create_process",
    "create_service",
    "create_service_broker",
    "create_service_instance",
    "create_service_plan",
    "create_space",
    "create_task",
    "delete_service_instance",
    "destroy_process",
    "destroy_task",
    "fail_task",
    "finish_staging",
    "managed_only",
    "one_transaction",
    "package_state",
    "package_state_expression",
    "read_app_context",
    "read_service_instance_context",
    "run_task",
    "scale_process",
    "service_instance_type_expression",
    "set_buildpack",
    "start_process",
    "start_staging",
    "stop_process",
    "succeed_task",
    "task_stop_evidence",
    "update_service_instance",
]
