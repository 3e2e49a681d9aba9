// The configuration file: virtlockd.conf syntax and keys plus relockd's own.
export { loadConfig, parseConfig, DEFAULT_CONFIG, CONFIG_KEYS, VIRTLOCKD_KEYS, SHUTDOWN_POLICIES } from './config.js';
export type { RelockdConfig, LoadedConfig, ShutdownPolicy, ConfigKey } from './config.js';
export { ConfigError, formatProblem } from './errors.js';
export type { ConfigProblem } from './errors.js';
export { parseVirConf, formatVirConfValue, MAX_CONFIG_FILE_SIZE } from './virconf.js';
export type { VirConfDocument, VirConfEntry, VirConfValue, VirConfScalar, Position } from './virconf.js';
export { parseLogFilters, parseLogOutputs, loggingPlan, levelOfPriority, priorityOfLevel, LogSpecError } from './logging.js';
export type { LogFilter, LogOutput, LogOutputKind, LibvirtPriority, LogLevelName, LoggingPlan, LoggingOutput, LoggingSettings } from './logging.js';
export { validateWith, describeError } from './validate.js';
export type { ValidationResult, AjvError } from './validate.js';
