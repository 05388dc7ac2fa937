// Hand-written (not generated): the fields every MailsyncException subclass
// carries, readable on the sealed base class, and the snake_case string of
// an ErrorCode. The `when` is exhaustive over the sealed hierarchy, so a new
// error code in Rust that is not added here fails the Kotlin compile (and so
// bindings-uniffi/test.sh).
package com.mailsync

/** The fields every [MailsyncException] carries, whatever its subclass. */
data class MailsyncErrorInfo(
    /** Stable snake_case code, identical in Rust, Python, Node, Kotlin and Swift. */
    val code: String,
    /** What went wrong, for people (never contains secrets). */
    val detail: String,
    /** For validation errors, the field at fault (e.g. `incoming.port`). */
    val field: String?,
    /** Whether retrying later, unchanged, may succeed. */
    val transient: Boolean,
    /** What the user or admin should do next. */
    val nextAction: String,
)

/** The common fields of this exception. */
val MailsyncException.info: MailsyncErrorInfo
    get() = when (this) {
        is MailsyncException.Validation -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.CapacityExceeded -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.NotFound -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.AlreadyExists -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.ProfileInUse -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.NotATestUser -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.SealKeyMismatch -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.Store -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.StoreUnavailable -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.ConsentDenied -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.AdminPolicy -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.OrgInternal -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.ConsentFailed -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.StateInvalid -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.AccountMismatch -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.ScopeNotGranted -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.TokenRevoked -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.InvalidClient -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.NotConnected -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.ProviderException -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.ProviderUnavailable -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.AuthRejected -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.ProtocolDisabled -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.MechanismUnsupported -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.Network -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.Tls -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.Timeout -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.ServerUnavailable -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.ProtocolException -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.SendDeferred -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.SendRejected -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.SenderNotAllowed -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.InsecureConnection -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.GrantMismatch -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.HostNotAllowed -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.Conflict -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.SinkFailed -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.NotEnabled -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.MessageTooLarge -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
        is MailsyncException.Internal -> MailsyncErrorInfo(code, detail, field, transient, nextAction)
    }

/** Stable snake_case code (e.g. `capacity_exceeded`). */
val MailsyncException.code: String get() = info.code

/** The code as the [ErrorCode] enum (what events and diagnoses carry). */
val MailsyncException.errorCode: ErrorCode get() = ErrorCode.valueOf(info.code.uppercase())

/** What went wrong, for people. */
val MailsyncException.detail: String get() = info.detail

/** For validation errors, the field at fault. */
val MailsyncException.field: String? get() = info.field

/** Whether retrying later, unchanged, may succeed. */
val MailsyncException.transient: Boolean get() = info.transient

/** What the user or admin should do next. */
val MailsyncException.nextAction: String get() = info.nextAction

/** The stable snake_case string of the code (`ErrorCode.CAPACITY_EXCEEDED.code == "capacity_exceeded"`). */
val ErrorCode.code: String get() = name.lowercase()
