import { createCipheriv, createDecipheriv, createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export function sha256Hex(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** URL-safe random string with `bytes` bytes of entropy. */
export function randomToken(bytes: number): string {
  return randomBytes(bytes).toString("base64url");
}

export function safeEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a);
  const bb = Buffer.from(b);
  return ab.length === bb.length && timingSafeEqual(ab, bb);
}

/** AES-256-GCM for vendor secrets at rest. The key is SHA-256 of the master key text. */
export class SecretBox {
  private readonly key: Buffer;
  constructor(masterKey: string) {
    this.key = createHash("sha256").update(masterKey).digest();
  }
  seal(plaintext: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", this.key, iv);
    const ct = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
    return Buffer.concat([iv, cipher.getAuthTag(), ct]).toString("base64");
  }
  open(sealed: string): string {
    const raw = Buffer.from(sealed, "base64");
    const decipher = createDecipheriv("aes-256-gcm", this.key, raw.subarray(0, 12));
    decipher.setAuthTag(raw.subarray(12, 28));
    return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString("utf8");
  }
  /** False when `sealed` was sealed under another key (GCM's tag does not verify). */
  canOpen(sealed: string): boolean {
    try {
      this.open(sealed);
      return true;
    } catch {
      return false;
    }
  }
}

export function masterKeyFile(dataDir: string): string {
  return join(dataDir, "master.key");
}

/**
 * On PostgreSQL every replica decrypts the same stored secrets, so a key file generated in one
 * replica's data dir cannot work: KEYBRAKE_MASTER_KEY is required. Checked before connecting.
 */
export function requireSharedMasterKey(config: { masterKey?: string; databaseUrl?: string }): void {
  if (config.databaseUrl && !config.masterKey) {
    throw new Error("KEYBRAKE_DATABASE_URL is set but KEYBRAKE_MASTER_KEY is not: every replica must decrypt the same vendor secrets, so give each the same KEYBRAKE_MASTER_KEY");
  }
}

/** KEYBRAKE_MASTER_KEY if given, else a key file (mode 0600) generated once in the data dir. */
export function loadMasterKey(dataDir: string, fromEnv?: string): string {
  if (fromEnv) return fromEnv;
  const file = masterKeyFile(dataDir);
  if (existsSync(file)) return readFileSync(file, "utf8").trim();
  const key = randomToken(32);
  // wx: if another process created it first, fail and read theirs.
  try {
    writeFileSync(file, key + "\n", { mode: 0o600, flag: "wx" });
    return key;
  } catch {
    return readFileSync(file, "utf8").trim();
  }
}
