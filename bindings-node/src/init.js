// Evaluated once per environment when the addon loads (src/lib.rs, `init`).
// Defines MailsyncError, the listener-failure reporter and the description of
// a sink's failure, and wraps every function, method and constructor of the
// signature table with the argument checks.
(function (exports, signatures, check) {
  'use strict';
  const { errorIsTransient, errorNextAction } = exports;

  // Every error mailsync throws or rejects with; transient and nextAction come
  // from the core's code table.
  class MailsyncError extends Error {
    constructor(message, code, field) {
      super(message);
      Object.defineProperty(this, 'name', { value: 'MailsyncError', configurable: true, writable: true });
      this.code = code;
      this.field = field ?? null;
      this.transient = errorIsTransient(code);
      this.nextAction = errorNextAction(code);
    }
  }
  exports.MailsyncError = MailsyncError;

  // A listener that threw, or whose promise rejected: a process warning, never
  // a crash, never seen by mailsync.
  function report(cause) {
    const text = cause instanceof Error ? cause.message : String(cause);
    const warning = new Error(`mailsync event listener failed: ${text}`, { cause });
    warning.name = 'MailsyncListenerWarning';
    process.emitWarning(warning);
  }

  // What a sink threw (or rejected with), as the core error it becomes: a
  // MailsyncError keeps its code, anything else is sink_failed. Never throws.
  function describe(thrown) {
    try {
      if (thrown instanceof MailsyncError) return [thrown.code, thrown.message];
      if (thrown instanceof Error) return ['sink_failed', `${thrown.name}: ${thrown.message}`];
      return ['sink_failed', String(thrown)];
    } catch {
      return ['sink_failed', 'the sink failed with a value that cannot be shown'];
    }
  }

  // A secret shows as its mask in util.inspect too (see SecretValue).
  Object.defineProperty(exports.SecretValue.prototype, Symbol.for('nodejs.util.inspect.custom'), {
    value: function inspect() { return this.toString(); },
  });

  const camel = (name) => name.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
  const snake = (name) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
  const invalid = (field, message) => new MailsyncError(`${field}: ${message}`, 'validation', field);
  const NARROW = { u8: 255, u16: 65535 };

  // napi converts a number to u32/u16 by wrapping or truncating it (-1, 1.5,
  // NaN, 2**32 would arrive as other numbers): every number must be a whole
  // number from 0 to 2**32-1; `version` fields (i64) up to 2**53-1.
  function checkNumbers(value, field, key, seen, param) {
    if (typeof value === 'number') {
      const max = key === 'version' ? Number.MAX_SAFE_INTEGER : 0xffffffff;
      if (!Number.isInteger(value) || value < 0 || value > max) {
        throw invalid(field || param, `must be a whole number from 0 to ${max}, not ${value}`);
      }
    } else if (value !== null && typeof value === 'object' && !ArrayBuffer.isView(value) && !seen.has(value)) {
      seen.add(value);
      for (const [k, v] of Object.entries(value)) {
        const inner = Array.isArray(value) ? `${field || param}[${k}]` : [field, snake(k)].filter(Boolean).join('.');
        checkNumbers(v, inner, k, seen, param);
      }
    }
  }

  // napi's own conversion of one argument; its error names the nested field
  // as " on Struct.field" from the innermost out.
  function checkConversion(signature, index, base, param, value) {
    try {
      check(signature, index, value);
    } catch (e) {
      const message = String(e && e.message);
      const path = [...message.matchAll(/ on \w+\.(\w+)/g)].map((m) => snake(m[1])).reverse();
      const missing = /^Missing field `(\w+)`/.exec(message);
      if (missing) path.push(snake(missing[1]));
      const narrow = /^Failed to convert u32 to (u8|u16)/.exec(message);
      throw invalid([base, ...path].filter(Boolean).join('.') || param,
        narrow ? `must be a whole number from 0 to ${NARROW[narrow[1]]}` : message.replace(/ on \w+\.\w+/g, ''));
    }
  }

  // Field names are relative to the record passed: the first argument and an
  // `options` argument name their own fields, later ones start with the
  // parameter's name (genericProfile's `incoming.endpoint.port`).
  signatures.forEach(([name, params, isAsync], signature) => {
    const [owner, method] = name.includes('.') ? name.split('.') : [null, name];
    const checkArgs = (args) => params.forEach((param, i) => {
      const base = i > 0 && param !== 'options' ? param : '';
      checkNumbers(args[i], base, null, new Set(), param);
      checkConversion(signature, i, base, param, args[i]);
    });
    if (method === 'new') {
      // A constructor (`Class.new`): the class itself is wrapped.
      exports[owner] = new Proxy(exports[owner], {
        construct(target, args, newTarget) {
          checkArgs(args);
          return Reflect.construct(target, args, newTarget);
        },
      });
      return;
    }
    const key = camel(method);
    const cls = owner && exports[owner];
    const target = !cls ? exports : Object.hasOwn(cls, key) ? cls : cls.prototype;
    const native = target[key];
    const wrapped = {
      [key](...args) {
        try {
          checkArgs(args);
        } catch (e) {
          if (isAsync) return Promise.reject(e);
          throw e;
        }
        return Reflect.apply(native, this, args);
      },
    }[key];
    Object.defineProperty(target, key, { ...Object.getOwnPropertyDescriptor(target, key), value: wrapped });
  });

  return { MailsyncError, report, describe };
})
