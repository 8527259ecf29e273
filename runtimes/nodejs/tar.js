'use strict';
// A small, strict tar reader for /_/init archives (gzip or not), and their safe unpacking.
//
// The whole archive is read and every member checked before anything is written: absolute
// paths, paths escaping the target, paths through a link of the archive, links pointing
// out of it and anything but files, directories and links are refused, so a refused init
// leaves the container untouched. Reads ustar, GNU long names and pax path/linkpath/size.

const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

const BLOCK = 512;
// Bounds what a small gzip can expand to (the code folders are tmpfs of 256 MiB).
const MAX_UNPACKED = 512 * 1024 * 1024;

class InvalidArchive extends Error {}

function field(header, start, length) {
  const raw = header.subarray(start, start + length);
  const nul = raw.indexOf(0);
  return (nul === -1 ? raw : raw.subarray(0, nul)).toString('utf8');
}

function octal(header, start, length, what) {
  const raw = header.subarray(start, start + length);
  if (raw[0] & 0x80) {
    // GNU base-256 for large values.
    let value = 0;
    for (let i = 1; i < raw.length; i++) value = value * 256 + raw[i];
    return value;
  }
  const text = field(header, start, length).trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw new InvalidArchive(`bad ${what} field ${JSON.stringify(text)}`);
  return parseInt(text, 8);
}

function checksumOk(header) {
  const stored = octal(header, 148, 8, 'checksum');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : header[i];
  return sum === stored;
}

function parsePax(data) {
  const out = {};
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    const length = Number(data.subarray(at, space).toString());
    if (space === -1 || !Number.isInteger(length) || length <= 0) {
      throw new InvalidArchive('bad pax header');
    }
    const record = data.subarray(space + 1, at + length - 1).toString('utf8');
    const eq = record.indexOf('=');
    out[record.slice(0, eq)] = record.slice(eq + 1);
    at += length;
  }
  return out;
}

// The members of a tar (or tar.gz) archive: {name, type, mode, linkname, data}.
function readTar(archive) {
  let data = archive;
  if (data.length >= 2 && data[0] === 0x1f && data[1] === 0x8b) {
    try {
      data = zlib.gunzipSync(data, { maxOutputLength: MAX_UNPACKED });
    } catch (err) {
      throw new InvalidArchive(`not a valid gzip stream: ${err.message}`);
    }
  }
  const members = [];
  let at = 0;
  let pax = {};
  let longName = null;
  let longLink = null;
  let ended = false;
  while (at + BLOCK <= data.length) {
    const header = data.subarray(at, at + BLOCK);
    if (header.every((b) => b === 0)) {
      ended = true;
      break;
    }
    if (!checksumOk(header)) throw new InvalidArchive(`bad header checksum at byte ${at}`);
    const typeflag = String.fromCharCode(header[156] || 0x30);
    let size = octal(header, 124, 12, 'size');
    if (pax.size !== undefined && typeflag !== 'x' && typeflag !== 'g') size = Number(pax.size);
    const start = at + BLOCK;
    if (!Number.isSafeInteger(size) || size < 0 || start + size > data.length) {
      throw new InvalidArchive('truncated archive');
    }
    const body = data.subarray(start, start + size);
    at = start + Math.ceil(size / BLOCK) * BLOCK;
    if (typeflag === 'x') {
      pax = { ...pax, ...parsePax(body) };
      continue;
    }
    if (typeflag === 'g') continue; // global defaults: nothing here uses them
    if (typeflag === 'L' || typeflag === 'K') {
      const text = body.toString('utf8').replace(/\0+$/, '');
      if (typeflag === 'L') longName = text;
      else longLink = text;
      continue;
    }
    const magic = field(header, 257, 6);
    const prefix = magic.startsWith('ustar') ? field(header, 345, 155) : '';
    let name = field(header, 0, 100);
    if (prefix) name = `${prefix}/${name}`;
    name = pax.path ?? longName ?? name;
    const linkname = pax.linkpath ?? longLink ?? field(header, 157, 100);
    members.push({
      name,
      type: typeflag,
      mode: octal(header, 100, 8, 'mode'),
      linkname,
      data: body,
    });
    pax = {};
    longName = null;
    longLink = null;
  }
  if (!ended && members.length === 0) throw new InvalidArchive('not a tar archive');
  return members;
}

const KINDS = { 0: 'file', '\0': 'file', 7: 'file', 5: 'dir', 2: 'symlink', 1: 'hardlink' };

function inside(root, target) {
  return target === root || target.startsWith(root + path.sep);
}

// Refuse what could write outside `dest`; `what` names the archive in messages.
function checkMembers(members, dest, what) {
  const root = path.resolve(dest);
  const links = new Set(
    members
      .filter((m) => KINDS[m.type] === 'symlink' || KINDS[m.type] === 'hardlink')
      .map((m) => path.posix.normalize(m.name).replace(/\/$/, '')),
  );
  for (const member of members) {
    const name = member.name;
    const normal = path.posix.normalize(name).replace(/\/$/, '');
    const kind = KINDS[member.type];
    let problem = null;
    if (name.startsWith('/') || name.includes('\0')) problem = 'is an absolute path';
    else if (!inside(root, path.resolve(root, normal))) problem = 'escapes the target directory';
    else if (kind === undefined) problem = 'is not a regular file, directory or link';
    else if (parents(normal).some((parent) => links.has(parent))) problem = 'goes through a link';
    else if (kind === 'symlink') {
      const target = member.linkname;
      if (target.startsWith('/') || !inside(root, path.resolve(root, path.posix.dirname(normal), target))) {
        problem = `links outside the target directory (${target})`;
      }
    } else if (kind === 'hardlink' && !inside(root, path.resolve(root, member.linkname))) {
      problem = `links outside the target directory (${member.linkname})`;
    }
    if (problem !== null) {
      throw new InvalidArchive(`${what} archive member ${JSON.stringify(name)} ${problem}`);
    }
  }
}

function parents(normal) {
  const parts = normal.split('/');
  const out = [];
  for (let i = 1; i < parts.length; i++) out.push(parts.slice(0, i).join('/'));
  return out;
}

// Write checked members below `dest`: no set-id bits, no group or other write.
function extract(members, dest) {
  const root = path.resolve(dest);
  fs.mkdirSync(root, { recursive: true });
  for (const member of members) {
    const target = path.resolve(root, path.posix.normalize(member.name));
    if (target === root) continue;
    const kind = KINDS[member.type];
    if (kind === 'dir') {
      fs.mkdirSync(target, { recursive: true, mode: (member.mode & 0o755) | 0o700 });
      continue;
    }
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.rmSync(target, { force: true });
    if (kind === 'symlink') fs.symlinkSync(member.linkname, target);
    else if (kind === 'hardlink') fs.copyFileSync(path.resolve(root, member.linkname), target);
    else fs.writeFileSync(target, member.data, { mode: (member.mode & 0o755) | 0o600 });
  }
}

module.exports = { readTar, checkMembers, extract, InvalidArchive };
