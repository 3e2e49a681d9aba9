// The configuration file: virtlockd.conf syntax and keys plus relockd's own.
export { loadConfig, parseConfig, DEFAULT_CONFIG, CONFIG_KEYS, VIRTLOCKD_KEYS } from './config.js';
export type { RelockdConfig } from './config.js';
export { ConfigError } from './errors.js';
export { parseVirConf, MAX_CONFIG_FILE_SIZE } from './virconf.js';
export { parseLogFilters, parseLogOutputs, loggingPlan } from './logging.js';
export { validateWith } from './validate.js';
