package ova

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strings"
	"text/template"
)

// Hardware is the virtual hardware the descriptor asks for.
type Hardware struct {
	CPUs      int
	MemoryMiB int
	// DiskCapacity is the virtual disk's size in bytes as the guest sees it.
	DiskCapacity int64
}

// DefaultHardware suits a coordinator node: the image itself needs little.
var DefaultHardware = Hardware{CPUs: 2, MemoryMiB: 2048, DiskCapacity: 4 << 30}

// DescriptorOptions are the inputs of Descriptor.
type DescriptorOptions struct {
	Name     string // virtual system ID and default VM name
	Version  string
	Hardware Hardware
	// DiskFile is the VMDK's name inside the OVA, DiskSize its length in
	// bytes (the OVF References section must state it).
	DiskFile string
	DiskSize int64
}

func (o DescriptorOptions) validate() error {
	switch {
	case o.Name == "":
		return fmt.Errorf("descriptor: empty name")
	case o.DiskFile == "" || strings.ContainsAny(o.DiskFile, "/\\"):
		return fmt.Errorf("descriptor: disk file name %q must be a plain file name", o.DiskFile)
	case o.DiskSize <= 0:
		return fmt.Errorf("descriptor: disk size %d must be positive", o.DiskSize)
	case o.Hardware.CPUs < 1 || o.Hardware.MemoryMiB < 256:
		return fmt.Errorf("descriptor: hardware %+v below 1 CPU / 256 MiB", o.Hardware)
	case o.Hardware.DiskCapacity < o.DiskSize/2 || o.Hardware.DiskCapacity%(1<<20) != 0:
		return fmt.Errorf("descriptor: disk capacity %d must be a whole number of MiB", o.Hardware.DiskCapacity)
	}
	return nil
}

// Descriptor renders the OVF descriptor of the appliance: one virtual system
// with CPUs, memory, an LSI Logic SCSI disk, a CD-ROM for the ISO transport
// of the OVF environment, a vmxnet3 NIC, and a ProductSection holding every
// entry of Properties.
func Descriptor(o DescriptorOptions) ([]byte, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	var buf bytes.Buffer
	err := descriptorTmpl.Execute(&buf, struct {
		DescriptorOptions
		CapacityMiB int64
		Class       string
		Properties  []PropertyDef
	}{o, o.Hardware.DiskCapacity >> 20, PropertyClass, Properties})
	if err != nil {
		return nil, fmt.Errorf("render descriptor: %w", err)
	}
	return buf.Bytes(), nil
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

var descriptorTmpl = template.Must(template.New("ovf").Funcs(template.FuncMap{"x": xmlEscape}).Parse(`<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{{x .DiskFile}}" ovf:id="file1" ovf:size="{{.DiskSize}}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{{.CapacityMiB}}" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The network the appliance is reached on</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{{x .Name}}">
    <Info>Continuum appliance</Info>
    <Name>{{x .Name}}</Name>
    <AnnotationSection>
      <Info>A human-readable annotation</Info>
      <Annotation>Continuum {{x .Version}}: coordinator node or data proxy, configured from the properties below at power-on.</Annotation>
    </AnnotationSection>
    <OperatingSystemSection ovf:id="101" vmw:osType="other5xLinux64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Linux (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection ovf:transport="com.vmware.guestInfo iso">
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{{x .Name}}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{{.Hardware.CPUs}} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.Hardware.CPUs}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{{.Hardware.MemoryMiB}}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{{.Hardware.MemoryMiB}}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>IDE controller 0</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:Description>Carries the OVF environment when the ISO transport is chosen</rasd:Description>
        <rasd:ElementName>CD/DVD drive 1</rasd:ElementName>
        <rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>4</rasd:Parent>
        <rasd:ResourceSubType>vmware.cdrom.remotepassthrough</rasd:ResourceSubType>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
    <ProductSection ovf:class="{{.Class}}">
      <Info>Appliance settings, read at power-on</Info>
      <Product>Continuum</Product>
      <Vendor>Continuum project</Vendor>
      <Version>{{x .Version}}</Version>
      <FullVersion>{{x .Version}}</FullVersion>
{{- $cat := ""}}
{{- range .Properties}}
{{- if ne .Category $cat}}{{$cat = .Category}}
      <Category>{{x .Category}}</Category>
{{- end}}
      <Property ovf:key="{{x .Key}}" ovf:type="{{.Type}}"{{if .Qualifiers}} ovf:qualifiers="{{x .Qualifiers}}"{{end}} ovf:userConfigurable="true" ovf:value="{{x .Default}}"{{if .Password}} ovf:password="true"{{end}}>
        <Label>{{x .Label}}</Label>
        <Description>{{x .Description}}</Description>
      </Property>
{{- end}}
    </ProductSection>
  </VirtualSystem>
</Envelope>
`))
