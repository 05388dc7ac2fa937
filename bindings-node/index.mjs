// ESM entry: re-exports the CommonJS binding (index.js) by name, including
// MailsyncError, which the generated loader does not list. tests/esm.test.mjs
// checks that this list equals the binding's exports.
import binding from './index.js'

export const {
  AccessToken,
  AlertLevel,
  ApplicationType,
  ApprovalStatus,
  Authentication,
  AuthenticationKind,
  Direction,
  IncomingDelivery,
  IncomingProtocol,
  MailSync,
  Mailbox,
  MailboxEventKind,
  MailboxSpec,
  MailsyncError,
  OAuthApp,
  OutgoingDelivery,
  PublishingStatus,
  SealKey,
  Security,
  ServerProfile,
  ServerType,
  TestOutcome,
  TestReport,
  UserType,
  errorCodes,
  isTransient,
  nextAction,
} = binding
export default binding
